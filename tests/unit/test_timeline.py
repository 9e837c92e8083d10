"""Run reports read back: lanes, pictures and summaries of hand-written reports.

Every report here validates against ``report.schema.json`` first; no process is
started (matplotlib draws in this process).
"""

from __future__ import annotations

import itertools
import json
import struct
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from helpers import rank_entry, run_report
from icelaunch import _watching
from icelaunch._watching import _lanes, _plot, _timeline
from icelaunch._watching._record import Recorder
from icelaunch._watching._timeline import check, draw, rows, summary

SCHEMA_NAME = "icelaunch-run-report"
SCHEMA = json.loads((Path(_watching.__file__).parent / "report.schema.json").read_text())


def valid(report: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(report, SCHEMA)
    return report


def lane(report: dict[str, Any], rank: int) -> _lanes.Lane:
    return next(found for found in rows(valid(report)) if found.rank == rank)


def one_rank(**fields: Any) -> dict[str, Any]:
    """A report of one rank (attempt 0), its entry changed by ``fields``."""
    entry = {**rank_entry(0, 0, 0.5, 1.0, 8.0, "returned", 0), **fields}
    return run_report(ranks=[entry], findings=[], events=[], duration_s=10.0)


# ---- rows(): one lane per rank ------------------------------------------------------------


def test_one_lane_per_rank_labelled_with_its_pids() -> None:
    found = rows(valid(run_report()))
    assert [x.rank for x in found] == [0, 1, 2, 3]
    assert found[0].label == "rank 0 (pids 4000, 4100)"
    assert lane(one_rank(), 0).label == "rank 0 (pid 4000)"


def test_the_failed_rank_ends_in_failed_at_its_ended_s() -> None:
    failed = lane(run_report(), 2)
    first = [e for e in failed.ends if e.attempt == 0]
    assert first == [_lanes.End(0, "failed", 5.0, 1, None)]
    last = [s for s in failed.segments if s.attempt == 0][-1]
    assert last.to_s == 5.0 and last.state == "running"
    assert lane(run_report(), 3).ends[0] == _lanes.End(0, "killed", 8.4, -9, "SIGKILL")


def test_a_restart_continues_the_row_and_is_marked() -> None:
    rank0 = lane(run_report(), 0)
    assert [e.attempt for e in rank0.ends] == [0, 1]
    assert sorted({s.attempt for s in rank0.segments}) == [0, 1]
    second = [s for s in rank0.segments if s.attempt == 1]
    assert second[0] == _lanes.Segment(1, "starting", 8.6, 9.4)
    assert [r.at_s for r in rank0.restarts] == [8.5]  # the restart event; attempt 1's start
    # is the same restart, not marked twice


def test_a_later_attempt_without_a_restart_event_is_marked_at_its_start() -> None:
    report = run_report()
    report["events"] = [e for e in report["events"] if e["kind"] != "restart"]
    marks = lane(report, 0).restarts
    assert [(m.at_s, m.attempt) for m in marks] == [(8.6, 1)]


@pytest.mark.parametrize(
    ("kind", "rank", "span"),
    [
        ("slow_rank", 1, (0, 2.0, 4.8, "load_batch")),
        ("stall", 3, (1, 10.0, 13.4, "all_reduce")),
    ],
)
def test_findings_are_spans_on_their_rank(kind: str, rank: int, span: tuple[Any, ...]) -> None:
    found = rows(valid(run_report()))
    spans = {x.rank: x.spans for x in found}
    assert [(s.attempt, s.from_s, s.to_s, s.label) for s in spans[rank]] == [span]
    assert spans[rank][0].kind == kind
    assert all(not spans[r] for r in spans if r not in (1, 3))


def test_waits_come_from_the_states_and_gaps_count_as_running() -> None:
    states = [[1.0, 2.0, "running", "step (a.py:1)"], [2.0, 3.0, "waiting", "barrier (a.py:2)"],
              [5.0, 6.0, "waiting", "barrier (a.py:2)"]]  # fmt: skip
    found = lane(one_rank(states=states), 0).segments
    assert [(s.state, s.from_s, s.to_s) for s in found] == [
        ("starting", 0.5, 1.0),
        ("running", 1.0, 2.0),
        ("waiting", 2.0, 3.0),
        ("running", 3.0, 5.0),
        ("waiting", 5.0, 6.0),
        ("running", 6.0, 8.0),
    ]
    assert found[2].where == "barrier (a.py:2)"


@pytest.mark.parametrize(
    ("fields", "segments", "end"),
    [
        # still running when the report was written: to the report's end
        ({"ended_s": None, "end": "running", "exit_code": None, "states": []},
         [("starting", 0.5, 1.0), ("running", 1.0, 10.0)], ("running", 10.0)),
        # never reached its own code (up_s null, no sample): starting to its end
        ({"up_s": None, "states": [], "end": "failed", "exit_code": 1, "ended_s": 2.0},
         [("starting", 0.5, 2.0)], ("failed", 2.0)),
        # up_s not known: starting ends at the first sampled state
        ({"up_s": None, "states": [[3.0, 8.0, "running", None]]},
         [("starting", 0.5, 3.0), ("running", 3.0, 8.0)], ("returned", 8.0)),
        # a process stopped by a signal (sampled "stopped") is paused, not ended
        ({"states": [[2.0, 4.0, "stopped", None]], "end": "exited"},
         [("starting", 0.5, 1.0), ("running", 1.0, 2.0), ("paused", 2.0, 4.0),
          ("running", 4.0, 8.0)], ("exited", 8.0)),
    ],
)  # fmt: skip
def test_each_attempt_starts_then_runs_to_its_end(
    fields: dict[str, Any], segments: list[tuple[Any, ...]], end: tuple[Any, ...]
) -> None:
    found = lane(one_rank(**fields), 0)
    assert [(s.state, s.from_s, s.to_s) for s in found.segments] == segments
    assert [(e.end, e.at_s) for e in found.ends] == [end]


def test_every_attempt_is_covered_once_from_its_start_to_its_end() -> None:
    for found in rows(valid(run_report())):
        for end in found.ends:
            pieces = [s for s in found.segments if s.attempt == end.attempt]
            assert pieces[0].state == "starting"
            assert all(a.to_s == b.from_s for a, b in itertools.pairwise(pieces))
            assert all(a.state != b.state for a, b in itertools.pairwise(pieces))
            assert pieces[-1].to_s == end.at_s


def test_a_report_the_recorder_builds_reads_back() -> None:
    """The recorder's own document (no launch: its calls made by hand)."""
    recorder = Recorder("job", {}, 0)
    recorder.workers_started(0, {0: (0, 11), 1: (1, 12)})
    recorder.rank_up(0, 0)
    recorder.rank_ended(0, 1, 1, recorder.wall0)
    recorder.event("restart", "restarting", attempt=0)
    recorder.workers_started(1, {0: (0, 21), 1: (1, 22)})
    recorder.rank_ended(1, 0, 0, recorder.wall0)
    report = valid(recorder.report("failed", "rank 1 failed", None, 1, None))
    found = rows(report)
    assert [x.label for x in found] == ["rank 0 (pids 11, 21)", "rank 1 (pids 12, 22)"]
    assert [e.end for e in found[1].ends] == ["failed", "running"]
    assert len(found[0].restarts) == 1
    assert "rank 1 failed" in summary(report)


def test_a_rank_seen_up_after_its_end_was_noted_is_up_by_its_end() -> None:
    """The agent may read a rank's "up" after it noted the rank's death (both arrived
    while it waited): up_s never comes after ended_s."""
    recorder = Recorder("job", {}, 0)
    recorder.workers_started(0, {0: (0, 11)})
    recorder.rank_ended(0, 0, 1, time.time())
    time.sleep(0.01)
    recorder.rank_up(0, 0)
    (entry,) = valid(recorder.report("failed", "", None, 1, None))["ranks"]
    assert entry["started_s"] <= entry["up_s"] <= entry["ended_s"]


# ---- pictures -----------------------------------------------------------------------------


def _read_html(path: Path) -> ET.Element:
    text = path.read_text(encoding="utf-8")
    lowered = text.lower()
    for remote in ('src="http', "src='http", 'href="http', "href='http", "@import", "url(http"):
        assert remote not in lowered, f"{path.name} fetches something: {remote}"
    assert "<script" not in lowered
    HTMLParser().feed(text)
    return ET.fromstring(text.split("\n", 1)[1])  # (the doctype line is HTML's, not XML's)


def _data(root: ET.Element, cls: str, *keys: str) -> list[tuple[str, ...]]:
    return [
        tuple(e.get(f"data-{k}", "") for k in keys) for e in root.iter() if e.get("class") == cls
    ]


def test_html_is_self_contained_and_shows_what_rows_says(tmp_path: Path) -> None:
    report = valid(run_report())
    draw(report, str(tmp_path / "run.html"))
    root = _read_html(tmp_path / "run.html")
    found = rows(report)
    shown = _data(root, "segment", "rank", "attempt", "state", "from", "to")
    assert shown == [
        (str(x.rank), str(s.attempt), s.state, repr(s.from_s), repr(s.to_s))
        for x in found
        for s in x.segments
    ]
    ends = _data(root, "end", "rank", "attempt", "end", "at")
    assert ends == [
        (str(x.rank), str(e.attempt), e.end, repr(e.at_s)) for x in found for e in x.ends
    ]
    assert _data(root, "finding", "kind", "rank", "from", "to") == [
        ("slow_rank", "1", "2.0", "4.8"),
        ("stall", "3", "10.0", "13.4"),
    ]
    assert _data(root, "restart", "at", "attempt") == [("8.5", "0")]
    assert root.findtext("head/title") == "train.py --epochs 2: failed"
    labels = [e.text for e in root.iter() if e.get("class") == "label"]
    assert labels == [x.label for x in found]


def test_html_joins_segments_narrower_than_a_pixel_when_there_are_too_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_timeline, "MAX_SEGMENTS", 10)
    report = valid(run_report())
    draw(report, str(tmp_path / "run.html"))
    root = _read_html(tmp_path / "run.html")
    svg = next(e for e in root.iter() if e.tag == "svg")
    resolution = float(svg.get("data-resolution-s", "0"))
    assert resolution > 0
    found = _lanes.coarsened(rows(report), resolution)
    shown = _data(root, "segment", "rank", "state", "from", "to")
    assert shown == [
        (str(x.rank), s.state, repr(s.from_s), repr(s.to_s)) for x in found for s in x.segments
    ]


def test_coarsened_keeps_long_segments_and_the_major_state_of_short_ones() -> None:
    short = [_lanes.Segment(0, "running" if i % 3 else "waiting", i * 0.1, (i + 1) * 0.1)
             for i in range(30)]  # fmt: skip
    pieces = (_lanes.Segment(0, "starting", -5.0, 0.0), *short)
    coarse = _lanes._coarse(pieces, 1.0)
    assert coarse[0] == pieces[0]
    assert [s.state for s in coarse[1:]] == ["running"]
    assert (coarse[1].from_s, coarse[1].to_s) == (0.0, short[-1].to_s)


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_matplotlib_pictures(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"run.{fmt}"
    draw(valid(run_report()), str(path))
    data = path.read_bytes()
    magic = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF"}[fmt]
    assert data.startswith(magic)
    if fmt == "png":
        assert struct.unpack(">II", data[16:24]) == _plot.pixels(4) == (1200, 280)


def test_without_matplotlib_the_error_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install matplotlib .*icelaunch\[timeline\]"):
        draw(run_report(), str(tmp_path / "run.png"))
    draw(run_report(), str(tmp_path / "run.html"))  # the HTML needs nothing


def test_an_unknown_suffix_names_the_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'.*run\.jpg': name a file ending in \.html"):
        draw(run_report(), str(tmp_path / "run.jpg"))
    assert not (tmp_path / "run.jpg").exists()


# ---- summary() and check() ----------------------------------------------------------------


def test_summary_lines() -> None:
    lines = summary(valid(run_report())).splitlines()
    assert lines[:3] == [
        "run report: train.py --epochs 2",
        "outcome:  failed: rank 2 failed (exit code 1); exit status 1",
        "duration: 14.0 s, from 2026-12-05T10:00:00+00:00 on node-a (icelaunch 0.1.0, "
        "torch 2.13.0)",
    ]
    assert lines[3].split() == [
        "rank",
        "pid",
        "attempt",
        "end",
        "status",
        "peak",
        "MiB",
        "CPU",
        "s",
    ]
    assert lines[6].split() == ["2", "4102", "1", "failed", "exit", "1", "320", "4.60", "(attempt",
                                "0:", "failed,", "exit", "1)"]  # fmt: skip
    assert lines[7].endswith("(attempt 0: killed, SIGKILL)")
    assert lines[8] == "restarts: 1, at 8.5 s"
    assert lines[9] == "findings:"
    assert lines[10].startswith("  2.0-4.8 s slow_rank: rank 1 is slowing the job")
    assert lines[-1] == (
        "failure:  WorkerFailedError: rank 2 (local rank 2, exit code 1) failed first: "
        "ValueError: loss is nan"
    )


def test_summary_of_a_success_is_short() -> None:
    report = valid(one_rank(end="returned"))
    report.update(outcome={"status": "succeeded", "message": ""}, failure=None)
    lines = summary(report).splitlines()
    assert lines[1] == "outcome:  succeeded"
    assert len(lines) == 5 and "returned" in lines[-1] and "findings" not in lines


@pytest.mark.parametrize(
    ("report", "message"),
    [
        ([], "not an icelaunch run report"),
        ({"schema": "other", "version": 1}, "not an icelaunch run report"),
        ({"schema": SCHEMA_NAME, "version": 2}, "version 2: this icelaunch reads version 1"),
        ({"schema": SCHEMA_NAME, "version": 1}, "incomplete run report: it lacks target"),
    ],
)  # fmt: skip
def test_check_says_what_is_wrong(report: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check(report)
