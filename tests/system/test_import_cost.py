"""What importing icelaunch costs, in a fresh interpreter: no torch."""

from __future__ import annotations

import subprocess
import sys


def test_import_does_not_import_torch():
    code = "import icelaunch, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
