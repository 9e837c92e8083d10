"""The run report: what happened during one launch, as one versioned JSON document.

The :class:`Recorder` is told what the engine does (events, workers started and
ended, stacks at a stop) and what each sample saw; :meth:`Recorder.report`
builds the document that ``report.schema.json`` (version :data:`VERSION`)
describes, and :func:`write` puts it in place atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from icelaunch._watching._sampler import Sample
from icelaunch._watching._slow import Closest, Finding

SCHEMA = "icelaunch-run-report"
VERSION = 1
MAX_STATES = 20_000  # per rank and attempt; beyond, neighbours merge (the picture stays)


@dataclass
class _Run:
    """One rank in one attempt."""

    rank: int
    local_rank: int
    attempt: int
    pid: int
    started_t: float
    up_t: float | None = None
    ended_t: float | None = None
    end: str = "running"
    exit_code: int | None = None
    signal: str | None = None
    peak_rss_bytes: int | None = None
    cpu_ticks: int | None = None
    waited_share: float | None = None  # share of its own looks waiting in a collective
    gpu_peak_bytes: int | None = None
    states: list[list[Any]] = field(default_factory=list)  # [from_t, to_t, state, where]
    stack_at_stop: str | None = None

    def add_state(self, t: float, state: str, where: str | None) -> None:
        last = self.states[-1] if self.states else None
        if last is not None and last[2] == state:
            last[1] = t
            return
        if last is not None:
            last[1] = t
        self.states.append([t, t, state, where])
        if len(self.states) > MAX_STATES:
            self.states = _coarser(self.states)


def _coarser(states: list[list[Any]]) -> list[list[Any]]:
    """Half as many intervals: each pair becomes one, waiting only if both waited."""
    merged = []
    for i in range(0, len(states), 2):
        pair = states[i : i + 2]
        state = "waiting" if all(s[2] == "waiting" for s in pair) else pair[-1][2]
        merged.append([pair[0][0], pair[-1][1], state, pair[0][3]])
    return merged


class Recorder:
    """Collects one launch's events, ranks and findings; builds the report."""

    def __init__(self, target: str, parameters: dict[str, Any], node_rank: int | None) -> None:
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.target = target
        self.parameters = parameters
        self.node_rank = node_rank
        self.events: list[dict[str, Any]] = []
        self.runs: dict[tuple[int, int], _Run] = {}  # (attempt, global rank) -> run
        self.findings: list[Finding] = []
        self.closest: Closest | None = None  # the slow-rank rule's nearest call
        self.stacks_at_stop: str | None = None
        self.sample_interval_s: float | None = None
        self.event("launch_started", "the launch began")

    def s(self, t: float) -> float:
        """Seconds since the launch began, of a ``time.monotonic()`` moment."""
        return round(t - self.t0, 3)

    def event(self, kind: str, message: str, t: float | None = None, **fields: Any) -> None:
        """Note an event (``t``: ``time.monotonic()``, now by default)."""
        at = self.s(time.monotonic() if t is None else t)
        self.events.append({"t_s": at, "kind": kind, "message": message, **fields})

    def workers_started(self, attempt: int, workers: dict[int, tuple[int, int]]) -> None:
        """Workers of ``attempt`` started: global rank -> (local rank, pid)."""
        now = time.monotonic()
        for rank, (local_rank, pid) in sorted(workers.items()):
            self.runs[(attempt, rank)] = _Run(rank, local_rank, attempt, pid, now)
        ranks = ", ".join(f"{r}: pid {p}" for r, (_, p) in sorted(workers.items()))
        self.event("workers_started", f"attempt {attempt}: {ranks}", now, attempt=attempt)

    def rank_up(self, attempt: int, rank: int) -> None:
        """The rank's own code began (it reported in)."""
        run = self.runs.get((attempt, rank))
        if run is not None and run.up_t is None:
            now = time.monotonic()  # the news may come after its end was noted
            run.up_t = now if run.ended_t is None else min(now, run.ended_t)

    def rank_ended(
        self, attempt: int, rank: int, code: int, died_wall: float, end: str | None = None
    ) -> None:
        """The rank's process ended with status ``code`` (negative: a signal) at ``died_wall``
        (``time.time()``); ``end`` as the schema names it (else from the status)."""
        run = self.runs.get((attempt, rank))
        if run is None or run.ended_t is not None:
            return
        run.ended_t = max(run.started_t, self.t0 + (died_wall - self.wall0))
        run.exit_code = code
        run.signal = _signal_name(code)
        run.end = end or ("exited" if code == 0 else "failed")
        if run.states:
            run.states[-1][1] = run.ended_t
        self.event(
            "rank_exited",
            f"rank {rank} ended with {'signal ' + run.signal if run.signal else f'status {code}'}",
            run.ended_t,
            attempt=attempt,
            rank=rank,
        )

    def rank_returned(self, attempt: int, rank: int) -> None:
        """The rank's function returned its value (its process ends on its own later)."""
        run = self.runs.get((attempt, rank))
        if run is None or run.ended_t is not None:
            return
        run.ended_t, run.end, run.exit_code = time.monotonic(), "returned", 0
        if run.states:
            run.states[-1][1] = run.ended_t

    def mark_end(self, attempt: int, rank: int, end: str) -> None:
        """Say how a rank's end came about once it is known (stopped, killed, returned)."""
        run = self.runs.get((attempt, rank))
        if run is not None:
            run.end = end

    def sampled(self, sample: Sample, peaks: dict[int, int], gpu: dict[int, int]) -> None:
        """One sample: states, CPU time, memory peaks (by pid), GPU memory (by pid)."""
        for rank, look in sample.looks.items():
            run = self.runs.get((sample.attempt, rank))
            if run is None or run.ended_t is not None or look.proc is None:
                continue
            if look.started and run.up_t is None:
                run.up_t = sample.t
            run.cpu_ticks = look.proc.cpu_ticks
            if look.tally is not None and look.tally.looks:
                run.waited_share = round(look.tally.waiting / look.tally.looks, 3)
            peak = max(peaks.get(look.pid, 0), look.proc.rss_bytes)
            run.peak_rss_bytes = max(run.peak_rss_bytes or 0, peak)
            if look.pid in gpu:
                run.gpu_peak_bytes = max(run.gpu_peak_bytes or 0, gpu[look.pid])
            if look.started:
                label = look.where.label if look.where is not None else None
                run.add_state(sample.t, look.state, label)

    def stacks_taken(self, attempt: int, stacks: dict[int, str], grouped: str) -> None:
        """The stacks of the running ranks at a stop."""
        for rank, text in stacks.items():
            run = self.runs.get((attempt, rank))
            if run is not None:
                run.stack_at_stop = text
        if grouped:
            self.stacks_at_stop = grouped

    def success_message(self) -> str:
        """How a successful launch ended: its functions returned, or its commands exited."""
        if any(run.end == "exited" for run in self.runs.values()):
            return "every rank exited with status 0"
        return "every rank returned"

    def report(
        self, status: str, message: str, sig: str | None, exit_status: int | None, failure: Any
    ) -> dict[str, Any]:
        """The report document (see ``report.schema.json``)."""
        end = time.monotonic()
        self.event("launch_ended", f"{status}: {message}" if message else status, end)
        import icelaunch

        return {
            "schema": SCHEMA,
            "version": VERSION,
            "icelaunch": getattr(icelaunch, "__version__", "?"),
            "torch": _torch_version(),
            "host": platform.node(),
            "launcher_pid": os.getpid(),
            "node_rank": self.node_rank,
            "target": self.target,
            "parameters": self.parameters,
            "started_at": _iso(self.wall0),
            "ended_at": _iso(self.wall0 + (end - self.t0)),
            "duration_s": self.s(end),
            "sample_interval_s": self.sample_interval_s,
            "outcome": {
                "status": status,
                "message": message,
                "signal": sig,
                "exit_status": exit_status,
            },
            "events": sorted(self.events, key=lambda e: e["t_s"]),
            "ranks": [self._run_entry(run) for _, run in sorted(self.runs.items())],
            "findings": [self._finding_entry(f) for f in self.findings],
            "slow_rank_closest": self._closest_entry(),
            "stacks_at_stop": self.stacks_at_stop,
            "failure": _failure_entry(failure),
        }

    def _run_entry(self, run: _Run) -> dict[str, Any]:
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "rank": run.rank,
            "local_rank": run.local_rank,
            "attempt": run.attempt,
            "pid": run.pid,
            "started_s": self.s(run.started_t),
            "up_s": None if run.up_t is None else self.s(run.up_t),
            "ended_s": None if run.ended_t is None else self.s(run.ended_t),
            "end": run.end,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "peak_rss_bytes": run.peak_rss_bytes,
            "cpu_s": None if run.cpu_ticks is None else round(run.cpu_ticks / ticks, 2),
            "waited_share": run.waited_share,
            "gpu_peak_bytes": run.gpu_peak_bytes,
            "states": [[self.s(a), self.s(b), st, w] for a, b, st, w in run.states],
            "stack_at_stop": run.stack_at_stop,
        }

    def _closest_entry(self) -> dict[str, Any] | None:
        c = self.closest
        if c is None:
            return None
        return {
            "t_s": self.s(c.t),
            "attempt": c.attempt,
            "rank": c.rank,
            "gap": round(c.gap, 3),
            "next_gap": round(c.next_gap, 3),
            "cpu_ratio": None if c.cpu_ratio is None else round(c.cpu_ratio, 3),
            "score": round(c.score, 2),
        }

    def _finding_entry(self, finding: Finding) -> dict[str, Any]:
        return {
            "kind": finding.kind,
            "rank": finding.rank,
            "attempt": finding.attempt,
            "from_s": self.s(finding.from_t),
            "to_s": self.s(finding.to_t),
            "message": finding.message(),
            "waited_s": round(finding.waited_s, 1),
            "function": finding.function,
            "where": finding.where,
            "waited_in": finding.waited_in,
            "waited_where": finding.waited_where,
        }


def _failure_entry(error: Any) -> dict[str, Any] | None:
    """A WorkerFailedError (or LaunchTimeoutError) as data; None for anything else."""
    details = getattr(error, "details", None)
    if error is None or details is None:
        return None
    return {
        "type": type(error).__name__,
        "message": str(error),
        "ranks": [
            {
                "rank": d.rank,
                "local_rank": d.local_rank,
                "exit_code": d.exitcode,
                "signal": d.signal_name,
                "exc_type": d.exc_type,
                "message": d.message,
                "traceback": d.traceback,
                "time": d.time,
            }
            for d in details.values()
        ],
    }


def _signal_name(code: int) -> str | None:
    if code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).isoformat()


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def write(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` as JSON to ``path`` atomically: the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=1, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
