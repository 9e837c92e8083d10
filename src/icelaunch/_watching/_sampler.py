"""Look at every rank of one attempt at the same moment: ``/proc``, and where each one is.

A sample reads each rank's ``/proc`` entry (state, CPU time, memory: no signal
sent) and where its main thread is, from one of two sources:

- ``"samples"``: the ranks' own samples (``_diagnosis._sampling``: a thread in
  each rank looks at its main thread at every multiple of the interval, while
  the run folder asks for it): no signal at all. The launcher's way.
- ``"signal"``: the stack signal, as ``icelaunch stacks`` (faulthandler answers
  from C). For ``icelaunch top`` when the ranks do not sample themselves.

The :class:`Tracker` turns samples into rows: CPU share since the last sample,
how long a rank's stack has not changed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from icelaunch import _diagnosis
from icelaunch._diagnosis import Tally, Where, where, where_in

#: seconds between two samples of the launcher (and of ``icelaunch top``)
SAMPLE_INTERVAL_S = 0.5
#: how long one sample waits for the ranks' stacks, all together (signal source)
STACK_BOUND_S = 0.3
#: a rank's own sample older than this many intervals is stale (its thread waits for the
#: GIL that native code holds): where it is stays unknown
_STALE_INTERVALS = 2.5
_SILENT_AFTER = 3  # a rank that did not answer this many samples running is not asked again


@dataclass(frozen=True)
class RankLook:
    """One rank at one sample."""

    rank: int
    local_rank: int
    pid: int
    proc: _diagnosis.Look | None  # None: the process is gone
    where: Where | None  # None: no stack (not asked, no answer, no user frame yet)
    started: bool  # its own code has run (a user frame was seen, or it reported in)
    tally: Tally | None = None  # its own looks since it started (own samples only)
    tally_t: float = 0.0  # when its thread wrote that tally (time.monotonic())

    @property
    def state(self) -> str:
        """``starting``, ``running``, ``waiting`` (in a collective), ``stopped`` or ``ended``."""
        if self.proc is None:
            return "ended"
        if self.proc.state in ("T", "t"):
            return "stopped"
        if self.where is None:
            return "running" if self.started else "starting"
        return "waiting" if self.where.waiting else "running"


@dataclass(frozen=True)
class Sample:
    """Every rank of one attempt at one moment (``time.monotonic()``)."""

    t: float
    attempt: int
    looks: dict[int, RankLook]  # by global rank


@dataclass(frozen=True)
class Member:
    """A rank to sample: its local rank and process."""

    local_rank: int
    pid: int


class Sampler:
    """Samples the ranks of one launch; remembers ranks that never answer."""

    def __init__(self, owner: bool = True, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._owner = owner  # the launcher itself (it may empty grown dump files)
        self._interval_s = interval_s
        self._unanswered: dict[int, int] = {}  # pid -> samples running without an answer
        self._started: set[int] = set()  # pids that showed a frame of their own code

    def sample(
        self,
        run_dir: str,
        attempt: int,
        members: Mapping[int, Member],
        source: str | None = "samples",
        up: Collection[int] = (),
    ) -> Sample:
        """Look at ``members`` (global rank -> :class:`Member`) of ``attempt``; ``source``
        of where they are: ``"samples"``, ``"signal"`` or None; ``up``: the global ranks
        known to run their own code (they reported in)."""
        now = time.monotonic()
        procs = {rank: _diagnosis.look(m.pid) for rank, m in members.items()}
        places: dict[int, Where | None] = {}
        tallies: dict[int, tuple[Tally, float]] = {}
        if source == "samples":
            for rank, m in members.items():
                own = _diagnosis.read_sample(run_dir, attempt, m.local_rank)
                if own is None:
                    continue
                tallies[rank] = (own.tally, own.t)
                if now - own.t <= _STALE_INTERVALS * self._interval_s:
                    places[rank] = where_in(own.frames, own.state)
        dumps: dict[int, str] = {}
        if source == "signal":
            ready = {
                r: info
                for r, info in _diagnosis.ready_ranks(run_dir, attempt).items()
                if r in members
                and info.pid == members[r].pid
                and self._unanswered.get(info.pid, 0) < _SILENT_AFTER
            }
            dumps = _diagnosis.ask(ready, STACK_BOUND_S, self._owner)
            for r, info in ready.items():
                missed = self._unanswered.get(info.pid, 0) + 1
                self._unanswered[info.pid] = 0 if r in dumps else missed
        looks = {}
        for rank, member in sorted(members.items()):
            proc = procs[rank]
            place = places.get(rank)
            if rank in dumps:
                place = where(dumps[rank], proc.state if proc else "?")
            if place is not None or rank in up:
                self._started.add(member.pid)
            started = member.pid in self._started
            tally, tally_t = tallies.get(rank, (None, 0.0))
            looks[rank] = RankLook(
                rank, member.local_rank, member.pid, proc, place, started, tally, tally_t
            )
        return Sample(now, attempt, looks)


@dataclass(frozen=True)
class Row:
    """What a live view shows of one rank."""

    rank: int
    local_rank: int
    pid: int
    state: str
    cpu_percent: float | None
    rss_bytes: int | None
    stack_age_s: float | None  # seconds since its stack last changed
    where: str | None  # ``load_batch (data.py:40)`` or ``all_reduce (train.py:18)``


class Tracker:
    """Turns samples into :class:`Row` s: CPU share between samples, age of a stack."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, int]] = {}  # pid -> (t, cpu ticks)
        self._stack: dict[int, tuple[object, float]] = {}  # pid -> (stack key, since)

    def rows(self, sample: Sample) -> list[Row]:
        """One row per rank of ``sample``."""
        rows = []
        ticks = _diagnosis.clock_ticks()
        for look in sample.looks.values():
            cpu = None
            if look.proc is not None:
                before = self._last.get(look.pid)
                if before is not None and sample.t > before[0]:
                    used = (look.proc.cpu_ticks - before[1]) / ticks
                    cpu = 100.0 * used / (sample.t - before[0])
                self._last[look.pid] = (sample.t, look.proc.cpu_ticks)
            age = None
            if look.where is not None:
                key, since = self._stack.get(look.pid, (None, sample.t))
                if key != look.where.key:
                    since = sample.t
                self._stack[look.pid] = (look.where.key, since)
                age = sample.t - since
            rows.append(
                Row(
                    look.rank,
                    look.local_rank,
                    look.pid,
                    look.state,
                    cpu,
                    look.proc.rss_bytes if look.proc else None,
                    age,
                    look.where.label if look.where else None,
                )
            )
        return rows
