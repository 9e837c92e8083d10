"""What importing icelaunch costs, in a fresh interpreter: no torch."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_import_torch():
    code = (
        "import icelaunch, sys; heavy = {'torch', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_script_runner_imports_no_torch_before_the_script():
    """OMP_NUM_THREADS and the rest of a script's environment are set by the runner
    before the script runs: torch must not be imported (and read them) first."""
    code = (
        "import sys; import icelaunch._worker._script; "
        "heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_report_command_imports_no_torch_and_no_matplotlib_before_drawing():
    code = (
        "import sys; import icelaunch.cli._report; "
        "heavy = {'torch', 'matplotlib', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
