"""What ``icelaunch top`` draws, from hand-made rows: no launch, no worker process."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from icelaunch import _watching
from icelaunch._watching import GpuUse, Row
from icelaunch.cli._top import Watcher, launcher_lines
from icelaunch.cli._top_view import Line, View, heading, percent, plain, rich_view, seconds, size

MiB = 1 << 20
ROWS = (
    Row(0, 0, 4101, "waiting", 2.4, 310 * MiB, 12.5, "all_reduce (t.py:18)"),
    Row(1, 1, 4102, "running", 99.6, 1536 * MiB, 0.5, "load_batch (d.py:40)"),
    Row(2, 2, 4103, "starting", None, 90 * MiB, None, None),
    Row(3, 3, 4104, "ended", None, None, None, "step (t.py:30)"),
)
FINDING = "rank 1 is slowing the job: for 12 s the others waited in all_reduce (t.py:18)"


def _view(**changes: object) -> View:
    fields: dict[str, object] = {
        "pid": 4100,
        "command": "icelaunch --devices cpu:0-3 train.py",
        "attempt": 0,
        "lines": tuple(
            Line(row, 0, 2 * MiB if row.rank == 1 else None, 87 if row.rank == 1 else None)
            for row in ROWS
        ),
        "findings": (FINDING,),
        "from_launcher": True,
    }
    fields.update(changes)
    return View(**fields)  # type: ignore[arg-type]


def test_plain_is_a_fixed_width_table_then_the_heading_then_the_findings() -> None:
    assert plain([_view()]).splitlines() == [
        "rank  node   pid  state     cpu%      mem  gpu mem  gpu%  same for  where",
        "   0     0  4101  waiting      2  310 MiB        -     -       12s  all_reduce (t.py:18)",
        "   1     0  4102  running    100  1.5 GiB  2.0 MiB    87      0.5s  load_batch (d.py:40)",
        "   2     0  4103  starting     -   90 MiB        -     -         -  -",
        "   3     0  4104  ended        -        -        -     -         -  step (t.py:30)",
        "launch 4100 (icelaunch --devices cpu:0-3 train.py), attempt 0, 4 ranks "
        "(the launcher's samples)",
        f"finding: {FINDING}",
    ]


def test_several_launches_are_separated_by_a_blank_line() -> None:
    first, second = _view(findings=()), _view(pid=4200, from_launcher=False, findings=())
    blocks = plain([first, second]).split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].endswith("4 ranks (the launcher's samples)")
    assert blocks[1].endswith("4 ranks (sampled by icelaunch top)")
    assert blocks[1].startswith("rank  node")


@pytest.mark.parametrize(
    ("changes", "tail"),
    [
        ({}, ", attempt 0, 4 ranks (the launcher's samples)"),
        (
            {"lines": _view().lines[:1], "attempt": 2},
            ", attempt 2, 1 rank (the launcher's samples)",
        ),
        ({"from_launcher": False}, ", attempt 0, 4 ranks (sampled by icelaunch top)"),
        ({"ended": True}, ", attempt 0: ended"),
        ({"lines": (), "attempt": None}, ": no rank is running Python code of its own yet"),
    ],
)
def test_heading(changes: dict[str, object], tail: str) -> None:
    assert heading(_view(**changes)) == "launch 4100 (icelaunch --devices cpu:0-3 train.py)" + tail


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (9.96 * MiB, "10.0 MiB"),
     (10 * MiB, "10 MiB"), (1023 * MiB, "1023 MiB"), (80 << 30, "80 GiB"), (3 << 40, "3.0 TiB"),
     (5000 << 40, "5000 TiB")],
)  # fmt: skip
def test_size(value: float | None, text: str) -> None:
    assert size(None if value is None else int(value)) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0.0, "0.0s"), (9.94, "9.9s"), (10.0, "10s"), (3599.0, "3599s"),
     (3600.0, "1h00m"), (90061.0, "25h01m")],
)  # fmt: skip
def test_seconds(value: float | None, text: str) -> None:
    assert seconds(value) == text


def test_percent() -> None:
    assert [percent(p) for p in (None, 0.0, 0.4, 250.2)] == ["-", "0", "0", "250"]


def test_rich_view_holds_every_rank_and_the_heading() -> None:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(rich_view([_view(), _view(pid=4200)]))
    text = out.getvalue()
    for row in ROWS:
        assert str(row.pid) in text
    assert text.count("launch 4100 (") == 1 and text.count("launch 4200 (") == 1
    assert "all_reduce (t.py:18)" in text and f"finding: {FINDING}" in text


# --- the launcher's live file, as _watching.publish writes it -----------------------------


def _publish(job_dir: Path, stacks: bool, rows: tuple[Row, ...] = ROWS[:2]) -> None:
    _watching.publish(
        str(job_dir),
        target="train.py",
        attempt=1,
        node_rank=3,
        interval_s=0.5,
        stacks=stacks,
        rows=list(rows),
        gpu={4102: GpuUse(4 * MiB, 55)},
        findings=[FINDING],
    )


def test_the_launchers_rows_are_read_as_published(tmp_path: Path) -> None:
    _publish(tmp_path, stacks=True)
    doc = _watching.read(str(tmp_path))
    assert doc is not None
    assert launcher_lines(doc) == [Line(ROWS[0], 3), Line(ROWS[1], 3, 4 * MiB, 55)]
    doc["ranks"].append({"rank": "not a row"})  # a malformed row is left out
    assert len(launcher_lines(doc)) == 2


def test_a_watcher_shows_the_launchers_samples_then_notices_the_end(tmp_path: Path) -> None:
    job_dir = tmp_path / f"icelaunch_{os.getpid()}_x"
    (job_dir / "0").mkdir(parents=True)
    watcher = Watcher(os.getpid(), str(job_dir))  # this process as the "launcher"
    try:
        _publish(job_dir, stacks=True)
        view = watcher.view()
        assert view.from_launcher and not watcher.sampled_itself and not view.ended
        assert [ln.row for ln in view.lines] == list(ROWS[:2])
        assert view.attempt == 1 and view.findings == (FINDING,)
        _publish(job_dir, stacks=True, rows=ROWS[1:2])  # rank 0 left the launcher's samples
        assert [(ln.row.rank, ln.row.state, ln.row.where) for ln in watcher.view().lines] == [
            (0, "ended", "all_reduce (t.py:18)"),  # where it was last seen
            (1, "running", "load_batch (d.py:40)"),
        ]
        _publish(job_dir, stacks=False)  # no stacks in it: this command adds its own
        view = watcher.view()
        assert view.from_launcher and watcher.sampled_itself
        assert len(view.lines) == 2
        shutil.rmtree(job_dir)  # the launch's end
        view = watcher.view()
        assert view.ended and not view.from_launcher
        assert view.findings == (FINDING,)  # the last ones seen stay on the last screen
    finally:
        watcher.close()
