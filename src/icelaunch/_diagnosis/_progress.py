"""The hang rule's first half: did any rank compute, or wake up, since the last look?

Seen from ``/proc`` alone (no rank is signalled). A rank moved when its process,
or a process it started, either

- **computes**: used CPU time, all threads together (torch's intra-op threads
  do a matmul), at least :data:`COMPUTING_SHARE` of one CPU over the interval:
  a torch op, C code holding the GIL, a loop in pure Python alike; or
- **waits for something that comes**: its main thread woke up from a wait more
  often than the sampling signal itself wakes it (a loop of collectives, I/O
  that is answered, short sleeps).

A rank blocked in a collective, a lock, a sleep or I/O that never comes does
neither. The second half, whether a Python stack changed, is the Watch's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from icelaunch._diagnosis import _proc

#: the share of one CPU above which a process counts as computing
COMPUTING_SHARE = 0.05
_MIN_TICKS = 2  # CPU time below this (20 ms at 100 ticks/s) is noise: a stack dump, a timer
#: wake-ups of a waiting main thread that the sampling signal itself may cause
SAMPLING_WAKES = 3

_Key = tuple[int, str]  # (pid, start time): one process for good


class Meter:
    """Remembers each process's CPU time and wake-ups between looks."""

    def __init__(self) -> None:
        self._seen: dict[_Key, tuple[_proc.Usage, float]] = {}
        self.why = ""  # what moved at the last look that found something, for the log

    def reset(self) -> None:
        """Forget every process (workers restart)."""
        self._seen = {}

    def moved(self, pids: Mapping[int, int]) -> bool:
        """Whether any of ``pids`` (global rank -> pid) moved since its last look.

        The ranks themselves first; only when none of them moved, the processes
        they started (one scan of ``/proc``). A process seen for the first time
        counts with what it used since it started.
        """
        now = time.monotonic()
        looked: set[_Key] = set()
        found = [r for r, pid in pids.items() if self._look(pid, now, looked)]
        if found:
            self.why = f"rank {found[0]} computes or wakes up"
            return True
        moving = [
            pid
            for below in _proc.descendants(pids.values()).values()
            for pid in below
            if self._look(pid, now, looked)
        ]
        self._seen = {key: self._seen[key] for key in looked}  # the processes gone go
        if moving:
            self.why = f"a process a rank started (pid {moving[0]}) computes or wakes up"
        return bool(moving)

    def _look(self, pid: int, now: float, looked: set[_Key]) -> bool:
        usage = _proc.usage(pid)
        if usage is None:
            return False
        key = (usage.pid, usage.start)
        looked.add(key)
        before, then = self._seen.get(key, (_proc.Usage(pid, usage.start, 0, 0), now))
        self._seen[key] = (usage, now)
        cpu = usage.cpu_ticks - before.cpu_ticks
        least = max(_MIN_TICKS, COMPUTING_SHARE * (now - then) * _proc.clock_ticks())
        return cpu >= least or usage.wakes - before.wakes > SAMPLING_WAKES
