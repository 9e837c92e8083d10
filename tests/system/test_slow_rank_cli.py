"""A slow rank of a script launched by the command is named, with its function, in a
WARNING line and the report; nothing is left running."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from tests.helpers import ROOT, icelaunch

pytestmark = pytest.mark.timeout(180)

JOB = ROOT / "benchmarks" / "slow_rank_job.py"


def test_a_slow_rank_of_a_script_is_named_in_a_warning_and_the_report(tmp_path: Path) -> None:
    stop_file, report, err = tmp_path / "stop", tmp_path / "run.json", tmp_path / "stderr"
    argv = icelaunch(
        "--devices", "cpu:0-3", "--slow-rank", "10", "--report", str(report),
        str(JOB), "--slow-rank", "1", "--units", "40", "--seconds", "120",
        "--stop-file", str(stop_file),
    )  # fmt: skip
    seen: dict[int, psutil.Process] = {}
    with err.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=fh)
    try:
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})
            if "is slowing the job" in err.read_text():
                stop_file.touch()
            time.sleep(0.2)
        assert proc.wait(timeout=60) == 0, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    warnings = [line for line in err.read_text().splitlines() if "is slowing the job" in line]
    assert len(warnings) == 1, warnings
    assert "rank 1 is slowing the job: for " in warnings[0]
    assert "while rank 1 was in load_batch (slow_rank_job.py:" in warnings[0]
    doc = json.loads(report.read_text())
    assert doc["outcome"]["status"] == "succeeded"
    assert [(f["rank"], f["function"]) for f in doc["findings"] if f["kind"] == "slow_rank"] == [
        (1, "load_batch")
    ]
    assert all(r["end"] == "exited" for r in doc["ranks"])
    gone = psutil.wait_procs(list(seen.values()), timeout=10)[1]
    assert not gone, f"processes survived the launch: {gone}"
