"""Launches from a program run as a fresh interpreter: rank prefixes, the seed example."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def test_console_lines_carry_rank_prefix(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from icelaunch import ElasticLauncher

            def worker(launcher):
                print("hello", launcher.rank)
                print("warn", launcher.rank, file=sys.stderr)

            if __name__ == "__main__":
                launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
                launcher(worker, launcher)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "[rank0]: hello 0" in proc.stdout and "[rank1]: hello 1" in proc.stdout
    assert "[rank1]: warn 1" in proc.stderr


def test_seed_example_runs() -> None:
    example = Path(__file__).parent.parent.parent / "examples" / "quickstart.py"
    proc = subprocess.run(
        [sys.executable, str(example), "cpu:0-1"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[rank1]: device cpu" in proc.stdout
    assert "{0: 0, 1: 10}" in proc.stdout
