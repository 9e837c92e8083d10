"""``icelaunch --report`` of a failing script, then ``icelaunch report --timeline`` of what
it wrote: the command line from end to end, in fresh interpreters."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import jsonschema
import pytest

from helpers import icelaunch, launch, write
from icelaunch import _watching

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

SCHEMA = json.loads((Path(_watching.__file__).parent / "report.schema.json").read_text())

FAILING = """
import os, time

if os.environ["RANK"] == "1":
    raise ValueError("rank 1 gives up")
time.sleep(60)
"""


def test_the_report_of_a_failing_script_is_drawn(tmp_path: Path) -> None:
    script = write(tmp_path, "job.py", FAILING)
    run = launch(icelaunch("--devices", "cpu:0-1", "--report", "r.json", str(script)), cwd=tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["target"].endswith("job.py")
    assert (report["outcome"]["status"], report["outcome"]["exit_status"]) == ("failed", 1)
    ends = {e["rank"]: (e["end"], e["exit_code"]) for e in report["ranks"]}
    assert ends == {0: ("stopped", -15), 1: ("failed", 1)}
    (failed,) = report["failure"]["ranks"]
    assert failed["rank"] == 1 and "ValueError: rank 1 gives up" in failed["message"]

    shown = subprocess.run(
        icelaunch("report", "r.json", "--timeline", "t.png"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"run report: {report['target']}"
    assert lines[1].startswith("outcome:  failed: rank 1 (local rank 1, exit code 1)")
    assert lines[-1] == "timeline: t.png"
    data = (tmp_path / "t.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
