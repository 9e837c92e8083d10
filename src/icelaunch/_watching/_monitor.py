"""What the engine's agent consults while workers run: samples, the slow rank, the report.

Every :data:`~icelaunch._watching._sampler.SAMPLE_INTERVAL_S` the agent's loop
lets the :class:`Monitor` look at the ranks (``/proc`` always; their stacks
too while slow-rank detection is on), feed the detector (a WARNING when a
slow rank is named), the recorder and the live file ``icelaunch top`` reads.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any

from icelaunch import _diagnosis, _rundir
from icelaunch._watching import _live
from icelaunch._watching._gpu import GpuReader, GpuUse
from icelaunch._watching._record import Recorder
from icelaunch._watching._sampler import SAMPLE_INTERVAL_S, Member, Sampler, Tracker
from icelaunch._watching._slow import Detector

logger = logging.getLogger(__name__)

_READ_DELAY_S = 0.08  # after the ranks' sampling moment, for their files to be written


class Monitor:
    """One launch's sampling: a recorder, a detector (if on) and the live file."""

    def __init__(
        self,
        recorder: Recorder,
        job_dir: str,
        slow_rank: float | None,
        gpus: bool = False,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        """Args:
        recorder: the launch's report in the making.
        job_dir: the launch's job folder (the live file goes there).
        slow_rank: the slow-rank window in seconds; None: no stack samples at all.
        gpus: the ranks use CUDA (their GPU memory is read, every 2 s at most).
        interval_s: seconds between samples.
        """
        self.recorder = recorder
        self.interval_s = interval_s
        recorder.sample_interval_s = interval_s
        self._job_dir = job_dir
        self._detector = None if slow_rank is None else Detector(slow_rank)
        self._sampler = Sampler(owner=True, interval_s=interval_s)
        self._tracker = Tracker()
        self._gpu = GpuReader() if gpus else None
        self._next = time.monotonic()
        self._run_dir = ""
        self._attempt = -1
        self._members: dict[int, Member] = {}

    @property
    def stacks(self) -> bool:
        """Whether samples take the ranks' stacks (slow-rank detection is on)."""
        return self._detector is not None

    def prepare(self, run_dir: str) -> None:
        """Before an attempt's workers start: ask its ranks to sample themselves."""
        if not self.stacks:
            return
        path = _rundir.sampling_path(run_dir)
        with contextlib.suppress(OSError):
            with open(path + ".tmp", "w") as fh:
                fh.write(f"{self.interval_s:g}\n")
            os.replace(path + ".tmp", path)

    def workers_started(self, run_dir: str, attempt: int, workers: dict[int, Member]) -> None:
        """Workers of ``attempt`` started (global rank -> member)."""
        self._run_dir, self._attempt, self._members = run_dir, attempt, dict(workers)
        self.recorder.workers_started(
            attempt, {r: (m.local_rank, m.pid) for r, m in workers.items()}
        )
        self._next = self._after(time.monotonic())

    def _after(self, now: float) -> float:
        """The next moment to look: just after the ranks' next sample (they sample at the
        multiples of the interval on the machine's monotonic clock)."""
        tick = (math.floor(now / self.interval_s) + 1) * self.interval_s
        return tick + min(_READ_DELAY_S, self.interval_s / 4)

    def wait_bound(self, bound: float) -> float:
        """How long the agent may wait before it must call :meth:`check`."""
        if not self._members:
            return bound
        return max(0.0, min(bound, self._next - time.monotonic()))

    def check(self, running: dict[int, int], up: set[int]) -> None:
        """Sample the ``running`` ranks (global rank -> pid) if a sample is due; ``up``:
        the global ranks that reported in."""
        now = time.monotonic()
        if now < self._next or not self._members:
            return
        self._next = self._after(now)
        members = {r: m for r, m in self._members.items() if running.get(r) == m.pid}
        if not members:
            return
        source = "samples" if self.stacks else None
        sample = self._sampler.sample(self._run_dir, self._attempt, members, source, up)
        gpu: dict[int, GpuUse] = self._gpu.read() if self._gpu is not None else {}
        peaks = {m.pid: p for m in members.values() if (p := _diagnosis.peak_bytes(m.pid))}
        self.recorder.sampled(sample, peaks, {pid: use.memory_bytes for pid, use in gpu.items()})
        findings: list[str] = []
        if self._detector is not None:
            for finding in self._detector.add(sample):
                logger.warning("%s", finding.message())
                self.recorder.event(
                    "slow_rank",
                    finding.message(),
                    attempt=finding.attempt,
                    rank=finding.rank,
                )
            self.recorder.findings = self._detector.findings
            self.recorder.closest = self._detector.closest
            findings = [f.message() for f in self._detector.findings[-3:] if f.kind == "slow_rank"]
        _live.publish(
            self._job_dir,
            target=self.recorder.target,
            attempt=self._attempt,
            node_rank=self.recorder.node_rank,
            interval_s=self.interval_s,
            stacks=self.stacks,
            rows=self._tracker.rows(sample),
            gpu=gpu,
            findings=findings,
        )

    def rank_up(self, rank: int) -> None:
        """A rank reported in (its own code runs)."""
        self.recorder.rank_up(self._attempt, rank)

    def rank_ended(self, rank: int, code: int, died_wall: float, end: str | None = None) -> None:
        """A rank's process ended (see :meth:`Recorder.rank_ended`)."""
        self.recorder.rank_ended(self._attempt, rank, code, died_wall, end)

    def rank_returned(self, rank: int) -> None:
        """A rank's function returned its value."""
        self.recorder.rank_returned(self._attempt, rank)

    def mark_end(self, rank: int, end: str) -> None:
        """Say how a rank ended once it is known (e.g. ``killed`` after a stop's grace)."""
        self.recorder.mark_end(self._attempt, rank, end)

    def stacks_taken(self, stacks: dict[int, str], grouped: str) -> None:
        """The stacks of the running ranks at a stop."""
        self.recorder.stacks_taken(self._attempt, stacks, grouped)

    def event(self, kind: str, message: str, **fields: Any) -> None:
        """An event of the engine's (restart, stop, ...)."""
        if self._attempt >= 0:
            fields.setdefault("attempt", self._attempt)
        self.recorder.event(kind, message, **fields)
