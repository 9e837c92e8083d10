"""``icelaunch._worker._script.plan``: how a command line is read (no process)."""

from __future__ import annotations

import sys

import pytest

from icelaunch._worker import _script


def test_plan_reads_python_commands():
    py = sys.executable
    assert _script.plan([py, "-u", "t.py"]) == _script.Plan("path", "t.py", ())
    assert _script.plan([py, "-m", "m", "a"]) == _script.Plan("module", "m", ("a",))
    assert _script.plan([py, "-c", "pass"]).kind == "exec"
    assert _script.plan(["/bin/echo", "hi"]) == _script.Plan("exec", "/bin/echo", ("hi",))
    with pytest.raises(ValueError, match="no command"):
        _script.plan([])
