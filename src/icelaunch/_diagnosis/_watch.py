"""Launcher side: time limits, hang detection and stacks at every stop, for one launch."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping

from icelaunch._diagnosis import _collect, _format
from icelaunch._diagnosis._memory import MemoryWatch
from icelaunch._diagnosis._progress import Meter
from icelaunch._rundir import STACK_SIGNAL_NAME

logger = logging.getLogger(__name__)

MEMORY_SAMPLE_S = 1.0  # the agent looks at the ranks' peak memory at least this often
_MIN_HANG_SAMPLE_S = 0.25
_MAX_HANG_SAMPLE_S = 5.0


class Stopped(Exception):
    """The launch is stopped by icelaunch itself; ``reason`` says why (``timeout``/``hang``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Watch:
    """What the agent consults while workers run, and calls before it stops them."""

    def __init__(self, timeout: float | None = None, hang_timeout: float | None = None) -> None:
        self.timeout = timeout
        self.hang_timeout = hang_timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._hang_every = (
            None
            if hang_timeout is None
            else min(max(hang_timeout / 4, _MIN_HANG_SAMPLE_S), _MAX_HANG_SAMPLE_S)
        )
        self._next_sample = time.monotonic()
        self._meter = Meter()
        self._last_keys: dict[int, tuple[_format.Thread, ...]] | None = None
        self._last_change = time.monotonic()
        self._silent: set[int] = set()  # ranks that did not answer the stack signal
        self.memory = MemoryWatch()
        #: raw dumps of the ranks at the last stop, by global rank
        self.dumps: dict[int, str] = {}
        #: the ranks that were running at the last stop
        self.running: list[int] = []
        #: why a running rank gave no stack at the last stop, by global rank
        self.notes: dict[int, str] = {}

    def new_attempt(self) -> None:
        """Workers (re)start: forget the previous attempt's stacks and hang clock."""
        self.dumps, self.running, self.notes = {}, [], {}
        self._last_keys, self._last_change = None, time.monotonic()
        self._meter.reset()
        self._silent = set()

    def wait_bound(self, poll: float) -> float:
        """How long the agent may wait for events before it must call :meth:`check`."""
        now = time.monotonic()
        bound = min(poll, MEMORY_SAMPLE_S)
        if self._deadline is not None:
            bound = min(bound, self._deadline - now)
        if self._hang_every is not None:
            bound = min(bound, self._next_sample - now)
        return max(bound, 0.0)

    def check(self, run_dir: str, attempt: int, pids: dict[int, int]) -> None:
        """Sample memory and stacks; raise :class:`Stopped` when a time limit passed.

        Args:
            run_dir: the attempt's run folder.
            attempt: the restart count.
            pids: global rank -> pid of the workers still running.
        """
        self.memory.sample(pids)
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            raise Stopped("timeout", f"the launch ran longer than timeout={self.timeout:g} s")
        if self._hang_every is None or now < self._next_sample:
            return
        self._sample_hang(run_dir, attempt, pids, now)

    def _sample_hang(self, run_dir: str, attempt: int, pids: Mapping[int, int], now: float) -> None:
        """One sample: a rank made progress if it computed or woke up (``_progress``),
        else if its Python stack changed."""
        self._next_sample = now + (self._hang_every or 0)
        if not pids or self._meter.moved(pids):  # seen from /proc: no rank is signalled
            self._last_keys, self._last_change = None, now
            return
        ranks = {
            r: info
            for r, info in _collect.ready_ranks(run_dir, attempt).items()
            if r in pids and r not in self._silent
        }
        dumps = _collect.ask(ranks)
        self._note_silent(ranks, dumps)
        keys = {rank: tuple(_format.user_threads(dump)) for rank, dump in dumps.items()}
        self._next_sample = time.monotonic() + (self._hang_every or 0)
        if keys != self._last_keys:
            self._last_keys, self._last_change = keys, now
            return
        assert self.hang_timeout is not None
        if now - self._last_change >= self.hang_timeout:
            raise Stopped(
                "hang",
                f"the job is judged hung: no rank computed, woke up from a wait or changed "
                f"its Python stack for {now - self._last_change:.0f} s "
                f"(hang_timeout={self.hang_timeout:g} s), sampled every {self._hang_every:g} s",
            )

    def _note_silent(self, asked: Mapping[int, _collect.Rank], dumps: Mapping[int, str]) -> None:
        """Ranks that did not answer are not asked again during this attempt (their
        program may handle the stack signal itself): said once."""
        for rank in sorted(set(asked) - set(dumps)):
            if not _collect.listens(asked[rank]):
                continue  # it ended, or replaced itself by exec, meanwhile
            self._silent.add(rank)
            logger.warning(
                "rank %s did not answer the stack signal (%s) within %g s: its stacks cannot "
                "be shown (does its program handle %s itself?); whether the job hangs is "
                "judged from the CPU time and wake-ups of its ranks",
                rank,
                STACK_SIGNAL_NAME,
                _collect.TOTAL_BOUND_S,
                STACK_SIGNAL_NAME,
            )

    def at_stop(
        self, run_dir: str, attempt: int, running: list[int], skip_local_ranks: Collection[int]
    ) -> None:
        """Take the stacks of the ranks about to be stopped (bounded to about 1 s)."""
        self.running = running
        known = {
            r: info
            for r, info in _collect.known_ranks(run_dir, attempt).items()
            if r in running and info.local_rank not in skip_local_ranks
        }
        listening = {r: info for r, info in known.items() if info.listens}
        self.dumps = _collect.ask({r: i for r, i in listening.items() if r not in self._silent})
        self.notes = _collect.why_silent(known, self.dumps)

    @property
    def stacks(self) -> dict[int, str]:
        """Stack text by global rank from the last stop (``WorkerFailedError.stacks``); a
        running rank that gave none has a one-line note in parentheses instead."""
        texts = {rank: _format.stack_text(dump) for rank, dump in self.dumps.items()}
        return dict(sorted({**self.notes, **texts}.items()))

    def grouped(self) -> str:
        """The grouped view of the last stop's stacks."""
        return _format.group(self.dumps, self.running, self.notes)
