"""``icelaunch report RUN.json [--timeline OUT]`` from a fresh interpreter, on a report
written by hand: the summary, the pictures, and one line for each kind of error."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from helpers import icelaunch, launch, run_report

pytestmark = pytest.mark.timeout(120)


def _report(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``icelaunch report`` run in ``tmp_path``, on its run.json (written by hand)."""
    (tmp_path / "run.json").write_text(json.dumps(run_report(), indent=1))
    return subprocess.run(
        icelaunch("report", *args), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_the_summary_is_printed(tmp_path: Path) -> None:
    result = _report(tmp_path, "run.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "run report: train.py --epochs 2"
    assert lines[1] == "outcome:  failed: rank 2 failed (exit code 1); exit status 1"
    assert "restarts: 1, at 8.5 s" in lines
    assert lines[-1].startswith("failure:  WorkerFailedError: rank 2 (local rank 2, exit code 1)")


@pytest.mark.parametrize("name", ["x.html", "x.png"])
def test_a_timeline_is_drawn(tmp_path: Path, name: str) -> None:
    result = _report(tmp_path, "run.json", "--timeline", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"timeline: {name}"
    data = (tmp_path / name).read_bytes()
    if name.endswith(".png"):
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", data[16:24]) == (1200, 280)
    else:
        assert data.count(b'class="segment"') > 4 * 2  # four ranks, two attempts each
        assert b"<title>train.py --epochs 2: failed</title>" in data


@pytest.mark.parametrize(
    ("content", "args", "status", "message"),
    [
        (None, ["missing.json"], 1, "missing.json: no such file"),
        ("{not json", ["bad.json"], 1, "bad.json: not JSON (line 1, column 2: "),
        ('{"a": 1}', ["bad.json"], 1, 'bad.json: not an icelaunch run report (it has no "schema"'),
        ('{"schema": "icelaunch-run-report", "version": 7}', ["bad.json"], 1,
         "bad.json: a run report of version 7: this icelaunch reads version 1"),
        (None, ["run.json", "--timeline", "x.jpg"], 2,
         "cannot draw a timeline as 'x.jpg': name a file ending in .html"),
        (None, ["run.json", "--timeline", "no/such/folder/x.html"], 1,
         "cannot write no/such/folder/x.html: No such file or directory"),
    ],
)  # fmt: skip
def test_each_error_is_one_line(
    tmp_path: Path, content: str | None, args: list[str], status: int, message: str
) -> None:
    if content is not None:
        (tmp_path / "bad.json").write_text(content)
    result = _report(tmp_path, *args)
    assert result.returncode == status
    assert result.stderr.startswith(f"icelaunch report: error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_help_explains_the_command(tmp_path: Path) -> None:
    result = _report(tmp_path, "--help")
    assert result.returncode == 0
    assert "usage: icelaunch report RUN.json [--timeline" in result.stdout
    assert "self-contained" in result.stdout and "icelaunch ./report" in result.stdout
    usage = _report(tmp_path)
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr


@pytest.mark.slow
def test_a_script_named_report_runs_as_dot_slash_report(tmp_path: Path) -> None:
    (tmp_path / "report").write_text('print("the script named report ran")\n')
    ran = launch(icelaunch("--devices", "cpu:0", "./report"), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "the script named report ran" in ran.stdout
    command = _report(tmp_path, "run.json")
    assert "to run the script ./report, write `icelaunch ./report`" in command.stderr
    assert command.returncode == 0 and "the script named report ran" not in command.stdout
