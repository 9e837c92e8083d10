"""Usage errors of the ``icelaunch`` command end at once with one clear line: no hang,
no traceback, nothing left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-dir", "/proc/x/logs", "SCRIPT"], "invalid log_dir '/proc/x/logs'"),
        (["--no-python", "/nonexistent/bin"], "program '/nonexistent/bin' not found"),
        (["--standalone", "--nnodes", "2", "SCRIPT"], "invalid nnodes '2' with standalone=True"),
    ],
    ids=["log-dir", "no-python", "standalone-nnodes"],
)
def test_command_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print('ok')\n")
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1"]
    argv += [str(script) if a == "SCRIPT" else a for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "ok" not in result.stdout
