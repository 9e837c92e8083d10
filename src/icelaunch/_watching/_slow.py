"""The slow rank, named from the ranks' own counts of their waiting, and stalls.

Each rank counts how often its main thread waits in a collective
(``_diagnosis._sampling``: 10 looks a second, by the rank itself). Where ranks
meet at collectives, the rank that holds the others back is the one that
waits least: its peers wait for it. Without a slow rank the last to arrive
changes from step to step, and over a window every rank waits about as much.
No look has to coincide with another rank's, so a loaded machine that wakes
the ranks' sampling threads late does not blur the rule.

Over the last ``window_s`` seconds (each rank's looks since then) rank R is
named when

- the window is full: it spans ``window_s`` after the moment every rank had
  waited once (the start-up, when one rank still imports while the others
  wait at the rendezvous, is not held against it), with at least
  :data:`MIN_LOOKS` looks of every rank;
- R waits least: at least :data:`MIN_GAP` of the time less than the median
  of the others (each of them lost about that share of its time to R);
- R stands alone: the next-least-waiting rank waits at least
  :data:`SEPARATION` of that gap more than R; and
- R does more work: it used at least :data:`MORE_WORK` times the CPU time of
  the others' median (``/proc``), or its gap is :data:`MIN_GAP_ANY` or more
  (a rank slow for any reason: reading data, a slower device). A rank that
  is only unlucky in the scheduler's hands (a CPU hog beside the job) does the
  same work as its peers and waits a few percent less now and then: never
  both.

The finding names where the others waited most, and the function in which R
spends more of its time than its peers do (the largest excess share: the
extra work, not where the lateness shows), with its most frequent line. It
stays open while the rule holds (and a window after), and a WARNING is
logged once when it opens.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass

from icelaunch._diagnosis import Tally
from icelaunch._watching._sampler import Sample

MIN_LOOKS = 40
MIN_GAP = 0.05
SEPARATION = 0.5
MORE_WORK = 1.1
MIN_GAP_ANY = 0.15
#: a rank that waits in the same place this long has stalled (recorded, not warned)
STALL_S = 10.0


@dataclass(eq=False)
class Finding:
    """A slow rank or a stall, from ``from_t`` to ``to_t`` (``time.monotonic()``)."""

    kind: str  # "slow_rank" or "stall"
    rank: int
    attempt: int
    from_t: float
    to_t: float
    waited_s: float = 0.0  # slow rank: how long each other rank waited for it, about
    function: str | None = None
    where: str | None = None
    waited_in: str | None = None
    waited_where: str | None = None

    def message(self) -> str:
        """One line, as logged."""
        if self.kind == "stall":
            return (
                f"rank {self.rank} waited {self.to_t - self.from_t:.0f} s in "
                f"{self.waited_in or '?'} ({self.waited_where or '?'}) without moving"
            )
        return (
            f"rank {self.rank} is slowing the job: for {self.to_t - self.from_t:.0f} s the "
            f"other ranks waited (about {self.waited_s:.0f} s each) in "
            f"{self.waited_in or '?'} ({self.waited_where or '?'}) while rank {self.rank} "
            f"was in {self.function or '?'} ({self.where or '?'})"
        )


@dataclass(frozen=True)
class Closest:
    """The nearest the rule came to naming a rank."""

    t: float
    attempt: int
    rank: int  # the least-waiting rank of that window
    gap: float  # its gap to the others' median share of waiting
    next_gap: float  # its gap to the next least-waiting rank
    cpu_ratio: float | None  # its CPU time over the others' median
    score: float  # Window.score: 1 or more names it


@dataclass(frozen=True)
class Window:
    """Every rank's looks over one window: who waits least, and by how much."""

    looks: dict[int, Tally]  # by global rank, the looks taken in the window
    start_t: float
    end_t: float
    cpu: dict[int, int] | None = None  # by global rank, CPU ticks used in the window

    def cpu_ratio(self, rank: int) -> float | None:
        """``rank``'s CPU time over the others' median in the window (None: unknown)."""
        if self.cpu is None:
            return None
        others = statistics.median(n for r, n in self.cpu.items() if r != rank)
        return self.cpu[rank] / others if others > 0 else None

    def share(self, rank: int) -> float:
        """The share of ``rank``'s looks that found it waiting in a collective."""
        tally = self.looks[rank]
        return tally.waiting / tally.looks

    def verdict(self) -> tuple[int, float, float, float | None] | None:
        """The least-waiting rank, its gap to the others' median and to the next rank, its
        CPU ratio; None without :data:`MIN_LOOKS` looks of every rank (or with one rank)."""
        if len(self.looks) < 2 or min(t.looks for t in self.looks.values()) < MIN_LOOKS:
            return None
        shares = sorted((self.share(r), r) for r in self.looks)
        least, rank = shares[0]
        gap = statistics.median(s for s, _ in shares[1:]) - least
        return rank, gap, shares[1][0] - least, self.cpu_ratio(rank)

    def slow(self) -> tuple[int, float] | None:
        """The rank the rule names and its gap, None if none."""
        verdict = self.verdict()
        if verdict is None:
            return None
        rank, gap, next_gap, cpu_ratio = verdict
        return (rank, gap) if Window.score(gap, next_gap, cpu_ratio) >= 1 else None

    @staticmethod
    def score(gap: float, next_gap: float, cpu_ratio: float | None) -> float:
        """How near a verdict comes to the rule: 1 or more names the rank."""
        if gap <= 0:
            return 0.0
        work = gap / MIN_GAP_ANY
        if cpu_ratio is not None:
            work = max(work, (cpu_ratio - 1) / (MORE_WORK - 1))
        return min(gap / MIN_GAP, next_gap / (SEPARATION * gap), work)

    def busy_in(self, rank: int) -> tuple[str | None, str | None]:
        """The function ``rank`` is busy in more than its peers (largest excess share of
        looks), and its most frequent line there."""
        mine = _busy(self.looks[rank])
        peers = [_busy(t) for r, t in self.looks.items() if r != rank]
        if not mine:
            return None, None

        def excess(function: str) -> tuple[float, str]:
            theirs = sum(p.get(function, 0.0) for p in peers) / max(len(peers), 1)
            return mine[function] - theirs, function

        function = max(mine, key=excess)
        lines = Counter(
            {
                place: n
                for (w, f, place, _), n in self.looks[rank].seen.items()
                if not w and f == function
            }
        )
        return function, (lines.most_common(1)[0][0] if lines else None)

    def waited_in(self, rank: int) -> tuple[str | None, str | None]:
        """Where the ranks other than ``rank`` waited most: the call and its line."""
        places: Counter[tuple[str | None, str | None]] = Counter()
        for r, tally in self.looks.items():
            if r != rank:
                for (waits, _, place, call), n in tally.seen.items():
                    if waits:
                        places[(call, place)] += n
        return places.most_common(1)[0][0] if places else (None, None)


def _busy(tally: Tally) -> dict[str, float]:
    """Share of ``tally``'s looks busy in each named function."""
    shares: Counter[str] = Counter()
    for (waits, function, _, _), n in tally.seen.items():
        if not waits and function is not None:
            shares[function] += n
    return {f: n / tally.looks for f, n in shares.items()} if tally.looks else {}


class Detector:
    """Feeds on samples (one attempt after another); returns findings as they open."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.findings: list[Finding] = []
        self._attempt = -1
        self._history: dict[int, deque[tuple[float, Tally, int]]] = {}  # (t, tally, CPU)
        self._first_t: float | None = None
        self._synced = False
        self._open: Finding | None = None
        self._last_t: float | None = None
        self._stalls: dict[int, tuple[object, Finding]] = {}  # rank -> (stack, its stall)
        #: the nearest the rule came to naming a rank (for tuning it): when, who, how near
        self.closest: Closest | None = None

    def add(self, sample: Sample) -> list[Finding]:
        """Take one sample; return the slow-rank findings it opens (to be warned)."""
        if sample.attempt != self._attempt:
            self._attempt = sample.attempt
            self._history, self._first_t, self._synced = {}, None, False
            self._open, self._last_t, self._stalls = None, None, {}
        self._note_stalls(sample)
        window = self._window(sample)
        if window is None:
            return []
        return self._judge(sample.t, window)

    def _window(self, sample: Sample) -> Window | None:
        """The ranks' looks over the last ``window_s`` once every rank has waited once;
        None while that is not known (a rank without counts, gone, or too early)."""
        tallies = {}
        for rank, look in sample.looks.items():
            if look.proc is None or look.tally is None or look.tally.looks == 0:
                return None
            tallies[rank] = (look.tally_t, look.tally, look.proc.cpu_ticks)
        if len(tallies) < 2:
            return None
        self._first_t = sample.t if self._first_t is None else self._first_t
        if not self._synced:
            waited = all(t.waiting > 0 for _, t, _ in tallies.values())
            if not waited and sample.t - self._first_t < self.window_s:
                return None
            self._synced = True  # the window starts here
            self._history = {r: deque() for r in tallies}
        if set(tallies) != set(self._history):
            return None
        for rank, (t, tally, ticks) in tallies.items():
            history = self._history[rank]
            if not history or tally.looks > history[-1][1].looks:
                history.append((t, tally, ticks))
            while len(history) > 1 and history[1][0] <= history[-1][0] - self.window_s:
                history.popleft()
        starts = [h[0][0] for h in self._history.values()]
        ends = [h[-1][0] for h in self._history.values()]
        if min(ends) - max(starts) < self.window_s * 0.95:
            return None
        looks = {r: h[-1][1].since(h[0][1]) for r, h in self._history.items()}
        used = {r: h[-1][2] - h[0][2] for r, h in self._history.items()}
        return Window(looks, min(starts), max(ends), used)

    def _judge(self, t: float, window: Window) -> list[Finding]:
        verdict = window.verdict()
        if verdict is not None:
            score = Window.score(*verdict[1:])
            if self.closest is None or score > self.closest.score:
                self.closest = Closest(t, self._attempt, *verdict, score)
        named = window.slow()
        step = 0.0 if self._last_t is None else t - self._last_t
        self._last_t = t
        current = self._open
        if current is not None and (named is None or named[0] != current.rank):
            if named is None and t - current.to_t < self.window_s:
                return []  # the episode goes on until a window without it
            self._open = current = None
        if named is None:
            return []
        rank, gap = named
        opened = []
        if current is None:
            current = Finding("slow_rank", rank, self._attempt, window.start_t, t)
            current.waited_s = gap * (window.end_t - window.start_t)
            self._open = current
            self.findings.append(current)
            opened.append(current)
        else:
            current.waited_s += gap * step
        current.to_t = t
        current.function, current.where = window.busy_in(rank)
        current.waited_in, current.waited_where = window.waited_in(rank)
        return opened

    def _note_stalls(self, sample: Sample) -> None:
        """A rank waiting in one place (same stack) for :data:`STALL_S` or more stalled."""
        for rank, look in sample.looks.items():
            place = look.where
            going = self._stalls.get(rank)
            if place is None or not place.waiting:
                self._stalls.pop(rank, None)
                continue
            if going is None or going[0] != place.key:
                stall = Finding("stall", rank, self._attempt, sample.t, sample.t)
                stall.waited_in, stall.waited_where = place.call, place.place
                self._stalls[rank] = (place.key, stall)
                continue
            stall = going[1]
            stall.to_t = sample.t
            if stall.to_t - stall.from_t >= STALL_S and stall not in self.findings:
                self.findings.append(stall)
