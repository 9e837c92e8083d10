"""The slow rank, named from stack samples alone, and the ranks' long waits (stalls).

In each sample where every rank was seen, a rank **holds the others back** when
it alone is busy while every other rank waits in a collective (``_frames``). In
a job without a slow rank that happens now to one rank, now to another (the
last to finish its step); with a slow rank it is nearly always the same one.
Over the last ``window_s`` seconds a rank is named when

- it held the others back in at least :data:`MIN_SAMPLES` samples,
- those are at least :data:`DOMINANCE` of all such samples (every rank's), and
- at least :data:`MIN_SHARE` of the window's samples (the others lost that
  share of their time to it).

The finding says where the others waited and where the slow rank was, the
places seen most often; it stays open, growing, while the rule holds, and a
WARNING is logged once when it opens.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from icelaunch._watching._frames import Where
from icelaunch._watching._sampler import Sample

MIN_SAMPLES = 6
DOMINANCE = 0.7
MIN_SHARE = 0.05
#: a rank that waits in the same place this long has stalled (recorded, not warned)
STALL_S = 10.0


@dataclass(eq=False)
class Finding:
    """A slow rank or a stall, from ``from_s`` to ``to_s`` (the recorder's clock)."""

    kind: str  # "slow_rank" or "stall"
    rank: int
    attempt: int
    from_t: float  # time.monotonic()
    to_t: float
    waited_s: float = 0.0
    function: str | None = None
    where: str | None = None
    waited_in: str | None = None
    waited_where: str | None = None
    #: places seen, for the most frequent one
    _places: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    _waits: Counter[tuple[str | None, str | None]] = field(default_factory=Counter)
    #: where the named rank, and its peers, were busy in every sample of the episode
    _mine: Counter[str | None] = field(default_factory=Counter)
    _theirs: Counter[str | None] = field(default_factory=Counter)
    _samples: int = 0
    _peer_samples: int = 0

    def message(self) -> str:
        """One line, as logged."""
        if self.kind == "stall":
            return (
                f"rank {self.rank} waited {self.to_t - self.from_t:.0f} s in "
                f"{self.waited_in or '?'} ({self.waited_where or '?'}) without moving"
            )
        return (
            f"rank {self.rank} is slowing the job: for {self.to_t - self.from_t:.0f} s the "
            f"other ranks waited (about {self.waited_s:.0f} s in all) in "
            f"{self.waited_in or '?'} ({self.waited_where or '?'}) while rank {self.rank} "
            f"was in {self.function or '?'} ({self.where or '?'})"
        )


@dataclass(frozen=True)
class _Alone:
    t: float
    rank: int | None  # the one busy rank while all others waited, if any
    busy: Where | None
    waiting: tuple[Where, ...]
    working: tuple[tuple[int, Where], ...] = ()  # every busy rank of the sample
    ranks: int = 0  # ranks seen in the sample


class Detector:
    """Feeds on samples (one attempt after another); returns findings as they open."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.findings: list[Finding] = []
        self._seen: deque[_Alone] = deque()
        self._open: Finding | None = None
        self._last_t: float | None = None
        self._attempt = -1
        self._stalls: dict[int, tuple[object, Finding]] = {}  # rank -> (stack, its stall)

    def add(self, sample: Sample) -> list[Finding]:
        """Take one sample; return the slow-rank findings it opens (to be warned)."""
        if sample.attempt != self._attempt:
            self._seen.clear()
            self._open, self._last_t, self._attempt = None, None, sample.attempt
            self._stalls = {}
        step = 0.0 if self._last_t is None else sample.t - self._last_t
        self._last_t = sample.t
        self._note_stalls(sample)
        entry = _classify(sample)
        if entry is None:
            return []
        self._seen.append(entry)
        while self._seen and self._seen[0].t < sample.t - self.window_s:
            self._seen.popleft()
        return self._judge(sample, entry, step)

    def _judge(self, sample: Sample, entry: _Alone, step: float) -> list[Finding]:
        counts = Counter(e.rank for e in self._seen if e.rank is not None)
        total = sum(counts.values())
        named = None
        if counts:
            rank, count = counts.most_common(1)[0]
            if (
                count >= MIN_SAMPLES
                and count >= DOMINANCE * total
                and count >= MIN_SHARE * len(self._seen)
            ):
                named = rank
        opened: list[Finding] = []
        current = self._open
        if current is not None and (named is None or named != current.rank):
            if named is None and sample.t - current.to_t < self.window_s:
                named = current.rank  # the episode goes on until a window without it
            else:
                self._open = current = None
        if named is None:
            return opened
        if current is None:
            current = Finding("slow_rank", named, sample.attempt, self._first(named), sample.t)
            for e in self._seen:
                _count(current, e)
            self._open = current
            self.findings.append(current)
            opened.append(current)
        else:
            _count(current, entry)
            if entry.rank == named:
                current.waited_s += step
        if entry.rank == named:
            current.to_t = sample.t
        _settle(current)
        if current in opened:
            current.waited_s = self._estimated_wait(named)
        return opened

    def _first(self, rank: int) -> float:
        return next(e.t for e in self._seen if e.rank == rank)

    def _estimated_wait(self, rank: int) -> float:
        """The others' waiting time behind ``rank`` in the window, from the sample rate."""
        if len(self._seen) < 2:
            return 0.0
        per_sample = (self._seen[-1].t - self._seen[0].t) / (len(self._seen) - 1)
        return per_sample * sum(1 for e in self._seen if e.rank == rank)

    def _note_stalls(self, sample: Sample) -> None:
        """A rank waiting in one place (same stack) for :data:`STALL_S` or more stalled."""
        for rank, look in sample.looks.items():
            place = look.where
            going = self._stalls.get(rank)
            if place is None or not place.waiting:
                self._stalls.pop(rank, None)
                continue
            if going is None or going[0] != place.key:
                stall = Finding("stall", rank, sample.attempt, sample.t, sample.t)
                stall.waited_in, stall.waited_where = place.call, place.place
                self._stalls[rank] = (place.key, stall)
                continue
            stall = going[1]
            stall.to_t = sample.t
            if stall.to_t - stall.from_t >= STALL_S and stall not in self.findings:
                self.findings.append(stall)


def _classify(sample: Sample) -> _Alone | None:
    """The sample's one busy rank, if every other waited; None if a rank was not seen."""
    live = [look for look in sample.looks.values() if look.proc is not None]
    if len(live) < 2 or any(look.where is None for look in live):
        return None
    busy = [look for look in live if look.where is not None and not look.where.waiting]
    waiting = tuple(look.where for look in live if look.where is not None and look.where.waiting)
    working = tuple((look.rank, look.where) for look in busy if look.where is not None)
    if len(busy) == 1 and len(waiting) == len(live) - 1:
        return _Alone(sample.t, busy[0].rank, busy[0].where, waiting, working, len(live))
    return _Alone(sample.t, None, None, (), working, len(live))


def _count(finding: Finding, entry: _Alone) -> None:
    """Take one sample of the episode into the finding's tallies."""
    if entry.rank == finding.rank:
        for w in entry.waiting:
            finding._waits[(w.call, w.place)] += 1
    finding._samples += 1
    finding._peer_samples += max(entry.ranks - 1, 1)
    for rank, place in entry.working:
        if rank == finding.rank:
            finding._mine[place.function] += 1
            finding._places[(place.function, place.place)] += 1
        else:
            finding._theirs[place.function] += 1


def _settle(finding: Finding) -> None:
    """The function in which the named rank spends more of its time than its peers do
    (the largest excess share: the extra work, not where the lateness shows), and its
    most frequent line."""
    if finding._mine:
        mine, theirs = finding._samples, finding._peer_samples
        function = max(
            finding._mine,
            key=lambda f: (finding._mine[f] / mine - finding._theirs[f] / theirs, f or ""),
        )
        lines = Counter({p: n for (f, p), n in finding._places.items() if f == function})
        finding.function, finding.where = function, lines.most_common(1)[0][0]
    if finding._waits:
        (finding.waited_in, finding.waited_where), _ = finding._waits.most_common(1)[0]
