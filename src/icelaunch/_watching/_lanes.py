"""A run report as lanes: one per global rank, what it did over time (pure data).

``lanes(report)`` reads a report (``report.schema.json``) and gives, per global
rank, its :class:`Segment` s (``starting``, ``running``, ``waiting``,
``paused``), one :class:`End` per attempt, the findings on it as
:class:`Span` s and the launch's :class:`Restart` s; x is seconds since the
launch began. The writers (``_svg``, ``_plot``) draw exactly these, with the
colours and marks named here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

#: the states a segment may have; ``paused``: the report's sampled ``stopped`` (SIGSTOP, a
#: debugger), renamed so that it is not taken for the end ``stopped``
STATES = ("starting", "running", "waiting", "paused")
#: how an attempt of a rank ended (``running``: still running when the report was written)
ENDS = ("returned", "exited", "failed", "stopped", "killed", "running")
FINDINGS = ("slow_rank", "stall")

# Okabe-Ito: told apart with every common colour-vision deficiency; marks differ in shape too
BLACK, ORANGE, SKY, GREEN, YELLOW = "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442"
BLUE, VERMILLION, PURPLE, GREY = "#0072B2", "#D55E00", "#CC79A7", "#BBBBBB"
STATE_COLOURS = {"starting": GREY, "running": BLUE, "waiting": ORANGE, "paused": YELLOW}
STATE_NAMES = {
    "starting": "starting",
    "running": "running",
    "waiting": "waiting in a collective",
    "paused": "paused (process stopped)",
}
#: end -> (shape, colour, legend text); shapes: circle, cross, square, diamond, arrow
END_MARKS = {
    "returned": ("circle", GREEN, "returned / exited 0"),
    "exited": ("circle", GREEN, "returned / exited 0"),
    "failed": ("cross", VERMILLION, "failed"),
    "stopped": ("square", PURPLE, "stopped by the launcher"),
    "killed": ("diamond", BLACK, "killed (grace ran out)"),
    "running": ("arrow", SKY, "still running"),
}
FINDING_COLOURS = {"slow_rank": VERMILLION, "stall": PURPLE}
RESTART_COLOUR = BLACK


@dataclass(frozen=True)
class Segment:
    """One state of one attempt of a rank, from ``from_s`` to ``to_s``."""

    attempt: int
    state: str  # one of STATES
    from_s: float
    to_s: float
    where: str | None = None  # e.g. ``all_reduce (train.py:18)`` while waiting


@dataclass(frozen=True)
class End:
    """How one attempt of a rank ended, at ``at_s`` (the report's end while ``running``)."""

    attempt: int
    end: str  # one of ENDS
    at_s: float
    exit_code: int | None = None
    signal: str | None = None


@dataclass(frozen=True)
class Span:
    """A finding on a rank's lane: a slow rank (with its function) or a stall."""

    kind: str  # one of FINDINGS
    attempt: int
    from_s: float
    to_s: float
    label: str | None  # the slow rank's function, or the call a stalled rank waited in
    message: str


@dataclass(frozen=True)
class Restart:
    """A restart of the launch's workers at ``at_s`` (the same on every lane)."""

    at_s: float
    attempt: int | None
    message: str


@dataclass(frozen=True)
class Lane:
    """Everything one global rank did, attempt after attempt."""

    rank: int
    local_rank: int
    pids: tuple[int, ...]  # one per attempt, in order
    segments: tuple[Segment, ...]
    ends: tuple[End, ...]
    spans: tuple[Span, ...] = ()
    restarts: tuple[Restart, ...] = ()

    @property
    def label(self) -> str:
        """``rank 0 (pid 4242)``; ``rank 0 (pids 4242, 4310)`` after a restart."""
        pids = list(dict.fromkeys(self.pids))
        if len(pids) == 1:
            return f"rank {self.rank} (pid {pids[0]})"
        shown = pids if len(pids) <= 2 else [pids[0], "…", pids[-1]]
        return f"rank {self.rank} (pids {', '.join(str(p) for p in shown)})"


def lanes(report: dict[str, Any]) -> list[Lane]:
    """One :class:`Lane` per global rank of ``report``, by rank."""
    end_s = float(report["duration_s"])
    by_rank: dict[int, list[dict[str, Any]]] = {}
    for entry in report["ranks"]:
        by_rank.setdefault(int(entry["rank"]), []).append(entry)
    marks = tuple(restarts(report["events"]))
    found = []
    for rank, entries in sorted(by_rank.items()):
        entries.sort(key=lambda e: (int(e["attempt"]), float(e["started_s"])))
        segments = [s for e in entries for s in _segments(e, end_s)]
        found.append(
            Lane(
                rank=rank,
                local_rank=int(entries[-1]["local_rank"]),
                pids=tuple(int(e["pid"]) for e in entries),
                segments=tuple(segments),
                ends=tuple(_end(e, end_s) for e in entries),
                spans=tuple(_spans(report["findings"], rank)),
                restarts=marks,
            )
        )
    return found


def _segments(entry: dict[str, Any], end_s: float) -> list[Segment]:
    """One attempt's segments: starting, then its sampled states (gaps count as running)."""
    attempt = int(entry["attempt"])
    start = float(entry["started_s"])
    stop = max(start, _ended(entry, end_s))
    states = [(float(a), float(b), str(st), w) for a, b, st, w in entry["states"]]
    up = entry["up_s"]
    first = states[0][0] if states else None
    code_from = min(x for x in (up, first, stop) if x is not None)
    code_from = min(max(float(code_from), start), stop)
    pieces: list[Segment] = [Segment(attempt, "starting", start, code_from)]
    t = code_from
    for a, b, state, where in states:
        a, b = max(a, t), min(b, stop)
        if b <= a:
            continue
        if a > t:
            pieces.append(Segment(attempt, "running", t, a))
        pieces.append(Segment(attempt, _state(state), a, b, where))
        t = b
    if t < stop:
        pieces.append(Segment(attempt, "running", t, stop))
    return _merged(p for p in pieces if p.to_s > p.from_s or p.state == "starting")


def _state(sampled: str) -> str:
    return {"stopped": "paused"}.get(sampled, sampled if sampled in STATES else "running")


def _merged(pieces: Iterable[Segment]) -> list[Segment]:
    """Neighbours of one state joined (the first one's ``where`` kept); empty ones dropped
    unless the attempt has nothing else."""
    merged: list[Segment] = []
    for piece in pieces:
        last = merged[-1] if merged else None
        if last is not None and last.attempt == piece.attempt:
            if last.to_s <= last.from_s:  # an empty piece gives way to the next one
                merged[-1] = replace(piece, from_s=last.from_s)
                continue
            if last.state == piece.state and last.to_s == piece.from_s:
                merged[-1] = replace(last, to_s=piece.to_s)
                continue
        merged.append(piece)
    return merged


def _ended(entry: dict[str, Any], end_s: float) -> float:
    ended = entry["ended_s"]
    return end_s if ended is None else float(ended)


def _end(entry: dict[str, Any], end_s: float) -> End:
    end = str(entry["end"])
    at = max(float(entry["started_s"]), _ended(entry, end_s))
    code, sig = entry["exit_code"], entry["signal"]
    return End(int(entry["attempt"]), end if end in ENDS else "failed", at, code, sig)


def _spans(findings: list[dict[str, Any]], rank: int) -> list[Span]:
    spans = []
    for f in findings:
        if int(f["rank"]) != rank or f["kind"] not in FINDINGS:
            continue
        label = f.get("function") if f["kind"] == "slow_rank" else f.get("waited_in")
        a, b = float(f["from_s"]), float(f["to_s"])
        spans.append(Span(f["kind"], int(f["attempt"]), a, max(a, b), label, str(f["message"])))
    return sorted(spans, key=lambda s: (s.from_s, s.kind))


def restarts(events: list[dict[str, Any]]) -> list[Restart]:
    """The ``restart`` events, and the start of each later attempt that none of them marks
    (a restart event between the previous attempt's start and this one's)."""
    marks = [
        Restart(float(e["t_s"]), e.get("attempt"), str(e["message"]))
        for e in events
        if e["kind"] == "restart"
    ]
    starts = sorted(
        (float(e["t_s"]), int(e.get("attempt", 0)), str(e["message"]))
        for e in events
        if e["kind"] == "workers_started"
    )
    previous = None
    for t, attempt, message in starts:
        if attempt > 0 and not any(
            (previous is None or m.at_s >= previous) and m.at_s <= t for m in marks
        ):
            marks.append(Restart(t, attempt, f"workers started again: {message}"))
        previous = t
    return sorted(marks, key=lambda m: m.at_s)


def coarsened(found: list[Lane], resolution_s: float) -> list[Lane]:
    """The lanes with runs of segments shorter than ``resolution_s`` (an attempt's) joined,
    each group shown as the state it spent most time in: for pictures of long runs."""
    if resolution_s <= 0:
        return found
    return [replace(lane, segments=tuple(_coarse(lane.segments, resolution_s))) for lane in found]


def _coarse(segments: tuple[Segment, ...], resolution_s: float) -> list[Segment]:
    out: list[Segment] = []
    group: list[Segment] = []

    def flush() -> None:
        if group:
            share: dict[str, float] = {}
            for s in group:
                share[s.state] = share.get(s.state, 0.0) + (s.to_s - s.from_s)
            state = max(share, key=lambda k: share[k])
            where = next(s.where for s in group if s.state == state)
            out.append(Segment(group[0].attempt, state, group[0].from_s, group[-1].to_s, where))
            group.clear()

    for s in segments:
        if group and (s.attempt != group[0].attempt or s.from_s != group[-1].to_s):
            flush()
        if s.to_s - s.from_s >= resolution_s:
            flush()
            out.append(s)
            continue
        group.append(s)
        if group[-1].to_s - group[0].from_s >= resolution_s:
            flush()
    flush()
    return _merged(out)


def extent_s(report: dict[str, Any], found: list[Lane]) -> float:
    """Where the x axis ends: the report's end, or a later mark; never 0."""
    ends = [e.at_s for lane in found for e in lane.ends]
    spans = [s.to_s for lane in found for s in lane.spans]
    return max([float(report["duration_s"]), *ends, *spans, 1e-3])


def caption(report: dict[str, Any]) -> tuple[str, str]:
    """The picture's title (the target and the outcome) and its second line."""
    outcome = report["outcome"]
    title = f"{report['target']}: {outcome['status']}"
    when = f"{report.get('started_at', '?')}, {float(report['duration_s']):.1f} s"
    detail = f"{outcome['message']} ({when})" if outcome.get("message") else when
    return title, f"{report.get('host', '?')}: {detail}"


_TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def ticks(extent: float, most: int = 10) -> list[float]:
    """Round places for the seconds axis, at most ``most`` + 1 of them.

    >>> ticks(7.3)
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    >>> ticks(3 * 3600)[:3]
    [0.0, 1800.0, 3600.0]
    """
    steps = sorted({*(m * 10.0**k for k in range(-3, 7) for m in (1, 2, 5)), *_TIME_STEPS})
    step = next(s for s in steps if extent / s <= most)
    return [float(round(i * step, 6)) for i in range(int(extent / step + 1e-9) + 1)]
