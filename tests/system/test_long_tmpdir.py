"""A TMPDIR too long for a Unix socket path: launches work all the same."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

FUNCTION_LAUNCH = """
from icelaunch import ElasticLauncher
from helpers import all_reduce_sum

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    print("results", launcher(all_reduce_sum, launcher), flush=True)
"""

SCRIPT = """
import icelaunch
print("rank", icelaunch.current().rank, flush=True)
"""


@pytest.fixture
def long_tmpdir(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / ("t" * 60) / ("m" * 60)
    folder.mkdir(parents=True)
    assert len(str(folder)) > 120
    tests = str(Path(__file__).parent.parent)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), tests) if p)
    return {**os.environ, "TMPDIR": str(folder), "PYTHONPATH": path}


def test_function_launch_with_a_long_tmpdir(tmp_path: Path, long_tmpdir: dict[str, str]) -> None:
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(FUNCTION_LAUNCH))
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=long_tmpdir,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results {0: 3.0, 1: 3.0}" in result.stdout
    assert not list(Path(long_tmpdir["TMPDIR"]).iterdir())  # nothing left there


def test_command_launch_with_a_long_tmpdir(tmp_path: Path, long_tmpdir: dict[str, str]) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = subprocess.run(
        [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", str(script)],
        capture_output=True,
        text=True,
        env=long_tmpdir,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1" in result.stdout
