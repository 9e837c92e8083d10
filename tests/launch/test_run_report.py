"""Run reports of real launches, however they end: a success, a failure, a restart, a
time limit, a rank killed from outside, Ctrl-C, a launch that cannot start.

Every report is checked against ``report.schema.json`` and against what the launch
did, and its timeline is drawn (HTML) and read back from the ``data-*`` attributes
of what it shows. One launch per outcome; the ranks' functions are in
``report_ranks.py`` (a light module: each rank imports it).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import report_ranks
from helpers import assert_gone, pid_files, wait_for, wait_for_pid_files, write
from icelaunch import ElasticLauncher, LaunchTimeoutError, WorkerFailedError, _watching
from icelaunch._errors import PortBusyError
from icelaunch._watching import _timeline
from report_ranks import (
    peer_in_all_reduce,
    rank_one_raises,
    rank_one_raises_in_the_first_attempt,
    returns_rank,
    sleeps_past_the_limit,
    waits_to_be_killed,
    works_a_little,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

FAST = {"monitor_interval": 0.5}
SCHEMA = json.loads((Path(_watching.__file__).parent / "report.schema.json").read_text())
RANKS_FILE = os.path.abspath(report_ranks.__file__)
TIMEOUT_S = 4  # the ranks are up well within it: the fork server is warm (``warm``)
WATCHER = "icelaunch._engine._watched"


# ---- the report and its picture -------------------------------------------------------------


def read_report(path: Path) -> dict[str, Any]:
    """The report at ``path``: valid, written whole (nothing half-written beside it), and
    consistent in its times."""
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    report: dict[str, Any] = json.loads(path.read_text())
    jsonschema.validate(report, SCHEMA)
    events = report["events"]
    assert events[0]["kind"] == "launch_started" and events[-1]["kind"] == "launch_ended"
    assert [e["t_s"] for e in events] == sorted(e["t_s"] for e in events)
    assert events[-1]["t_s"] == report["duration_s"]
    for entry in report["ranks"]:
        times = [entry["started_s"], entry["up_s"], entry["ended_s"], report["duration_s"]]
        known = [t for t in times if t is not None]
        assert known == sorted(known), entry
        for a, b, _, _ in entry["states"]:
            assert entry["started_s"] <= a <= b <= entry["ended_s"], entry
    assert _timeline.summary(report).startswith(f"run report: {report['target']}\n")
    return report


def entry(report: dict[str, Any], rank: int, attempt: int = 0) -> dict[str, Any]:
    found = [e for e in report["ranks"] if (e["rank"], e["attempt"]) == (rank, attempt)]
    assert len(found) == 1, report["ranks"]
    return found[0]


def kinds(report: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in report["events"]]


def drawn(report: dict[str, Any], tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    """The timeline drawn as HTML, read back: the ``data-*`` of every segment, end mark and
    restart mark; checked to show each attempt of each rank from its start to its end."""
    path = tmp_path / "timeline.html"
    _timeline.draw(report, str(path))
    root = ET.fromstring(path.read_text(encoding="utf-8").split("\n", 1)[1])  # no doctype
    shown: dict[str, list[dict[str, str]]] = {"segment": [], "end": [], "restart": []}
    for element in root.iter():
        if element.get("class") in shown:
            data = {k[5:]: v for k, v in element.attrib.items() if k.startswith("data-")}
            shown[str(element.get("class"))].append(data)
    for e in report["ranks"]:
        key = {"rank": str(e["rank"]), "attempt": str(e["attempt"])}
        pieces = [s for s in shown["segment"] if s.items() >= key.items()]
        assert float(pieces[0]["from"]) == e["started_s"]
        if e["up_s"] is None or e["up_s"] > e["started_s"]:  # none when up at once (overload)
            assert pieces[0]["state"] == "starting"
        assert all(a["to"] == b["from"] for a, b in itertools.pairwise(pieces))
        assert float(pieces[-1]["to"]) == e["ended_s"]
        ends = [m for m in shown["end"] if m.items() >= key.items()]
        assert [(m["end"], float(m["at"])) for m in ends] == [(e["end"], e["ended_s"])]
    return shown


def ends_shown(shown: dict[str, list[dict[str, str]]]) -> dict[tuple[int, int], str]:
    """(attempt, rank) -> the end mark the picture shows."""
    return {(int(m["attempt"]), int(m["rank"])): m["end"] for m in shown["end"]}


@pytest.fixture(scope="module")
def warm() -> None:
    """One launch first: the fork server is warm, so a later one starts in well under 1 s."""
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert launcher(returns_rank, launcher) == {0: 0, 1: 1}


# ---- one test per outcome ---------------------------------------------------------------------


def test_a_success(tmp_path: Path) -> None:
    path = tmp_path / "made" / "for it" / "run.json"  # folders that do not exist yet
    launcher = ElasticLauncher("cpu:0-1", report=str(path), **FAST).freeze()
    assert launcher(works_a_little, launcher) == {0: 0, 1: 1}
    report = read_report(path)
    assert report["outcome"] == {
        "status": "succeeded",
        "message": "every rank returned",
        "signal": None,
        "exit_status": 0,
    }
    assert report["target"] == "works_a_little" and report["failure"] is None
    assert report["launcher_pid"] == os.getpid() and report["parameters"]["report"] == str(path)
    order = ["launch_started", "rendezvous_started", "rendezvous_done", "workers_started"]
    assert kinds(report) == [*order, "launch_ended"]
    for rank in (0, 1):
        e = entry(report, rank)
        assert (e["end"], e["exit_code"], e["signal"], e["stack_at_stop"]) == (
            "returned", 0, None, None
        )  # fmt: skip
        assert e["up_s"] is not None
        assert 10 << 20 < e["peak_rss_bytes"] < 64 << 30  # a Python process with torch
        lifetime = e["ended_s"] - e["started_s"]
        assert 0 <= e["cpu_s"] <= lifetime * (os.cpu_count() or 1)  # as last sampled
        assert e["states"] and {s[2] for s in e["states"]} <= {"running", "waiting"}
    assert len(report["ranks"]) == 2
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): "returned", (0, 1): "returned"}
    assert shown["restart"] == []


def test_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text("{" + " " * 100_000 + "stale")  # an earlier file, replaced whole
    before = path.stat().st_ino
    launcher = ElasticLauncher("cpu:0-1", report=str(path), **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(rank_one_raises, launcher, str(tmp_path))
    assert_gone(pid_files(tmp_path))
    assert path.stat().st_ino != before
    report = read_report(path)
    outcome = report["outcome"]
    assert (outcome["status"], outcome["signal"], outcome["exit_status"]) == ("failed", None, 1)
    assert outcome["message"] == info.value.first.summary()
    assert "ValueError: rank 1 gives up" in outcome["message"]
    failed, stopped = entry(report, 1), entry(report, 0)
    assert (failed["end"], failed["exit_code"], failed["signal"]) == ("failed", 1, None)
    assert (stopped["end"], stopped["exit_code"], stopped["signal"]) == ("stopped", -15, "SIGTERM")
    assert failed["ended_s"] <= stopped["ended_s"]
    assert "time.sleep(WAIT_LIMIT_S)" in stopped["stack_at_stop"]
    assert failed["stack_at_stop"] is None
    assert "rank 0: time.sleep(WAIT_LIMIT_S)" in report["stacks_at_stop"]
    assert "in rank_one_raises" in report["stacks_at_stop"]
    failure = report["failure"]
    assert failure["type"] == "WorkerFailedError"
    assert [(r["rank"], r["exit_code"], r["exc_type"], r["message"]) for r in failure["ranks"]] == [
        (1, 1, "builtins.ValueError", "rank 1 gives up")
    ]
    assert "rank 1 gives up" in failure["message"]
    said = [e for e in report["events"] if e["kind"] in ("rank_exited", "failure")]
    assert [(e["kind"], e.get("rank")) for e in said] == [
        ("rank_exited", 1), ("failure", 1), ("rank_exited", 0)
    ]  # fmt: skip
    assert said[0]["t_s"] == failed["ended_s"]
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): "stopped", (0, 1): "failed"}
    last = [s for s in shown["segment"] if s["rank"] == "1"][-1]
    assert float(last["to"]) == failed["ended_s"]


def test_a_peer_that_fails_of_a_failure_is_not_said_to_be_stopped(tmp_path: Path) -> None:
    """Rank 0's all_reduce fails as rank 1 ends: its end is its own (the failure lists it)
    unless the stop's SIGTERM came first (on a busy machine)."""
    path = tmp_path / "run.json"
    launcher = ElasticLauncher("cpu:0-1", report=str(path), **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(peer_in_all_reduce, launcher)
    report = read_report(path)
    peer = entry(report, 0)
    listed = {r["rank"] for r in report["failure"]["ranks"]}
    assert set(info.value.failures) == listed
    if peer["signal"] == "SIGTERM":
        assert peer["end"] == "stopped" and listed == {1}
    else:
        assert peer["end"] == "failed" and listed == {0, 1}, peer
    assert entry(report, 1)["end"] == "failed"
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): peer["end"], (0, 1): "failed"}


def test_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    launcher = ElasticLauncher("cpu:0-1", report=str(path), max_restarts=1, **FAST).freeze()
    assert launcher(rank_one_raises_in_the_first_attempt, launcher) == {0: 0, 1: 1}
    report = read_report(path)
    assert report["outcome"]["status"] == "succeeded" and report["outcome"]["exit_status"] == 0
    ends = {(e["attempt"], e["rank"]): e["end"] for e in report["ranks"]}
    assert ends == {(0, 0): "stopped", (0, 1): "failed", (1, 0): "returned", (1, 1): "returned"}
    assert entry(report, 1, 0)["exit_code"] == 1
    assert entry(report, 0, 1)["pid"] != entry(report, 0, 0)["pid"]
    events = report["events"]
    (restart,) = [e for e in events if e["kind"] == "restart"]
    starts = [e for e in events if e["kind"] == "workers_started"]
    assert [e["attempt"] for e in starts] == [0, 1]
    assert entry(report, 1, 0)["ended_s"] <= restart["t_s"] <= starts[1]["t_s"]
    assert restart["attempt"] == 0
    done = [e.get("attempt") for e in events if e["kind"] == "rendezvous_done"]
    assert done == [0, 1]
    assert max(e["ended_s"] for e in report["ranks"] if e["attempt"] == 0) <= starts[1]["t_s"]
    shown = drawn(report, tmp_path)
    assert [(float(m["at"]), m.get("attempt")) for m in shown["restart"]] == [(restart["t_s"], "0")]
    assert ends_shown(shown) == ends


def test_a_time_limit(tmp_path: Path, warm: None) -> None:
    path = tmp_path / "run.json"
    launcher = ElasticLauncher("cpu:0-1", report=str(path), timeout=TIMEOUT_S, **FAST).freeze()
    with pytest.raises(LaunchTimeoutError):
        launcher(sleeps_past_the_limit, launcher, str(tmp_path))
    pids = pid_files(tmp_path)
    assert_gone(pids)
    assert len(pids) == 2, f"the ranks had not started within {TIMEOUT_S} s (overloaded?)"
    report = read_report(path)
    assert report["outcome"] == {
        "status": "timeout",
        "message": f"the launch ran longer than timeout={TIMEOUT_S} s",
        "signal": None,
        "exit_status": 124,
    }
    assert report["duration_s"] >= TIMEOUT_S
    (stop,) = [e for e in report["events"] if e["kind"] == "stop"]
    assert stop["reason"] == "timeout" and stop["t_s"] >= TIMEOUT_S
    line = sleeps_past_the_limit.__code__.co_firstlineno + 2
    for rank in (0, 1):
        e = entry(report, rank)
        assert (e["end"], e["signal"]) == ("stopped", "SIGTERM")
        assert e["ended_s"] >= stop["t_s"]
        assert f'File "{RANKS_FILE}", line {line}, in sleeps_past_the_limit' in e["stack_at_stop"]
    assert "ranks 0-1: time.sleep(WAIT_LIMIT_S)" in report["stacks_at_stop"]
    assert report["failure"]["type"] == "LaunchTimeoutError"
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): "stopped", (0, 1): "stopped"}


def test_a_rank_killed_from_outside(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    killed: list[int] = []

    def kill_rank_one() -> None:
        wait_for(lambda: len(pid_files(tmp_path)) == 2, 120, "the ranks")
        pid = int((tmp_path / "1.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_rank_one, daemon=True)
    killer.start()
    launcher = ElasticLauncher("cpu:0-1", report=str(path), **FAST).freeze()
    try:
        with pytest.raises(WorkerFailedError):
            launcher(waits_to_be_killed, launcher, str(tmp_path))
    finally:
        killer.join(130)
    assert_gone(pid_files(tmp_path))
    report = read_report(path)
    assert (report["outcome"]["status"], report["outcome"]["exit_status"]) == ("failed", 137)
    rank1 = entry(report, 1)
    assert [rank1["pid"]] == killed
    assert (rank1["end"], rank1["exit_code"], rank1["signal"]) == ("failed", -9, "SIGKILL")
    assert entry(report, 0)["end"] == "stopped"
    (failed,) = report["failure"]["ranks"]
    assert (failed["rank"], failed["signal"]) == (1, "SIGKILL")
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): "stopped", (0, 1): "failed"}


CTRL_C = """
import os, sys, time
from pathlib import Path
from icelaunch import ElasticLauncher


def wait(launcher, folder):
    Path(folder, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    time.sleep(60)


if __name__ == "__main__":
    folder, report = sys.argv[1], sys.argv[2]
    # fork: no fork server to start first in this fresh interpreter (seconds)
    launcher = ElasticLauncher(
        "cpu:0-1", report=report, shutdown_timeout=10, start_method="fork"
    ).freeze()
    try:
        launcher(wait, launcher, folder)
    except KeyboardInterrupt as exc:
        print("raised", type(exc).__name__, flush=True)
        sys.exit(130)
"""


def test_ctrl_c(tmp_path: Path) -> None:
    script = write(tmp_path, "ctrl_c.py", CTRL_C)
    path, folder = tmp_path / "run.json", tmp_path / "pids"
    folder.mkdir()
    argv = [sys.executable, str(script), str(folder), str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_pid_files(folder, 2, proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
        proc.wait()
    assert_gone(pid_files(folder))
    assert proc.returncode == 130 and "raised LaunchStopped" in out, out
    report = read_report(path)
    outcome = report["outcome"]
    assert (outcome["status"], outcome["signal"], outcome["exit_status"]) == (
        "stopped", "SIGINT", 130
    )  # fmt: skip
    assert outcome["message"].startswith("the launch was stopped by SIGINT")
    (stop,) = [e for e in report["events"] if e["kind"] == "stop"]
    assert stop["reason"] == "SIGINT"
    for rank in (0, 1):
        e = entry(report, rank)
        assert (e["end"], e["signal"]) == ("stopped", "SIGTERM"), e
        assert stop["t_s"] <= e["ended_s"]
        assert "in wait" in e["stack_at_stop"]
    shown = drawn(report, tmp_path)
    assert ends_shown(shown) == {(0, 0): "stopped", (0, 1): "stopped"}


def test_a_launch_that_cannot_start(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = ElasticLauncher("cpu:0-1", report=str(path), master_port=port).freeze()
        with pytest.raises(PortBusyError):
            launcher(returns_rank, launcher)
    report = read_report(path)
    outcome = report["outcome"]
    assert (outcome["status"], outcome["exit_status"]) == ("error", 1)
    assert outcome["message"].startswith(f"PortBusyError: port {port} is already in use")
    assert report["ranks"] == [] and report["failure"] is None
    assert "workers_started" not in kinds(report)
    assert drawn(report, tmp_path) == {"segment": [], "end": [], "restart": []}


# ---- a report that cannot be written -------------------------------------------------------


def test_a_report_that_cannot_be_written_changes_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "run.json"  # under a file: no folder can be made
    launcher = ElasticLauncher("cpu:0-1", report=str(path), **FAST).freeze()
    with caplog.at_level(logging.WARNING, logger=WATCHER):
        assert launcher(returns_rank, launcher) == {0: 0, 1: 1}
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            busy = ElasticLauncher("cpu:0-1", report=str(path), master_port=port).freeze()
            with pytest.raises(PortBusyError):
                busy(returns_rank, busy)
    said = [r.getMessage() for r in caplog.records if r.name == WATCHER]
    assert len(said) == 2, said
    for message in said:
        assert message.startswith(f"the run report could not be written to {path}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
