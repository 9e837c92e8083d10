"""``cli.main`` called in the test process: a real launch of a script's workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import write
from icelaunch import cli


@pytest.mark.timeout(60)
def test_main_in_process_leaves_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write(tmp_path, "omp.py", 'import os\nprint("OMP", os.environ["OMP_NUM_THREADS"])\n')
    assert cli.main(["--devices", "cpu:0-1", "--omp-num-threads", "3", str(path)]) == 0
    assert "OMP_NUM_THREADS" not in os.environ
    out = capfd.readouterr().out
    assert "[rank0]: OMP 3" in out and "[rank1]: OMP 3" in out
