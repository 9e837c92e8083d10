"""Launcher side: time limits, hang detection and stacks at every stop, for one launch."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from icelaunch._diagnosis import _collect, _format
from icelaunch._diagnosis._memory import MemoryWatch

logger = logging.getLogger(__name__)

MEMORY_SAMPLE_S = 1.0  # the agent looks at the ranks' peak memory at least this often
_MIN_HANG_SAMPLE_S = 0.25
_MAX_HANG_SAMPLE_S = 5.0
_SAMPLING_WAKES = 3  # wake-ups of a waiting main thread that the sampling signal itself causes


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
        self._last_keys: dict[int, tuple[_format.Thread, ...]] = {}
        self._last_wakes: dict[int, int] = {}
        self._last_change = time.monotonic()
        self.memory = MemoryWatch()
        #: raw dumps of the ranks at the last stop, by global rank
        self.dumps: dict[int, str] = {}
        #: the ranks that were running at the last stop
        self.running: list[int] = []

    def new_attempt(self) -> None:
        """Workers (re)start: forget the previous attempt's stacks and hang clock."""
        self.dumps, self.running = {}, []
        self._last_keys, self._last_change = {}, time.monotonic()
        self._last_wakes = {}

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
        self._sample_hang(run_dir, attempt, now)

    def _sample_hang(self, run_dir: str, attempt: int, now: float) -> None:
        """One sample: a rank made progress if its stack changed or its main thread woke
        up from waits (a training loop whose samples all land in the same collective)."""
        pids = {rank: info.pid for rank, info in _collect.ready_ranks(run_dir, attempt).items()}
        wakes = {rank: voluntary_switches(pid) for rank, pid in pids.items()}
        woke = any(
            wakes[rank] - self._last_wakes.get(rank, wakes[rank]) > _SAMPLING_WAKES
            for rank in wakes
        )
        self._last_wakes = wakes
        self._next_sample = time.monotonic() + (self._hang_every or 0)
        if woke:  # progress, seen from /proc alone: the ranks are not even signalled
            self._last_keys, self._last_change = {}, now
            return
        dumps = _collect.take(run_dir, attempt)
        keys = {rank: tuple(_format.user_threads(dump)) for rank, dump in dumps.items()}
        self._next_sample = time.monotonic() + (self._hang_every or 0)
        if keys != self._last_keys or not keys:
            self._last_keys, self._last_change = keys, now
            return
        assert self.hang_timeout is not None
        if now - self._last_change >= self.hang_timeout:
            raise Stopped(
                "hang",
                f"the job is judged hung: no rank's Python stack changed, and no rank's main "
                f"thread woke up from a wait, for {now - self._last_change:.0f} s "
                f"(hang_timeout={self.hang_timeout:g} s), sampled every {self._hang_every:g} s",
            )

    def at_stop(
        self, run_dir: str, attempt: int, running: list[int], skip_local_ranks: Collection[int]
    ) -> None:
        """Take the stacks of the ranks about to be stopped (bounded to about 1 s)."""
        self.running = running
        self.dumps = _collect.take(run_dir, attempt, skip_local_ranks)

    @property
    def stacks(self) -> dict[int, str]:
        """Stack text by global rank from the last stop (``WorkerFailedError.stacks``)."""
        return {rank: _format.stack_text(dump) for rank, dump in self.dumps.items()}

    def grouped(self) -> str:
        """The grouped view of the last stop's stacks."""
        return _format.group(self.dumps, self.running)


def voluntary_switches(pid: int) -> int:
    """How often the main thread of ``pid`` has gone to sleep so far (0 if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
