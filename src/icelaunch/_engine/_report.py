"""What the engine raises and prints when workers fail or are stopped.

:func:`failed_error` builds :class:`WorkerFailedError` once, from torch's
per-rank failures, the reports our workers wrote (``_rundir.report_path``),
torch's error files, the stderr tails, and the diagnosis (crash stacks, the
cause of a SIGKILL, the stacks of the ranks still running at the stop).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
from typing import Any

from torch.distributed.elastic.agent.server.api import WorkerGroup
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from icelaunch import _diagnosis, _rundir
from icelaunch._diagnosis import Stopped, Watch
from icelaunch._engine import _failures
from icelaunch._engine._signals import StopOutcome
from icelaunch._errors import LaunchStopped

__all__ = [
    "describe",
    "failed_error",
    "print_interrupted",
    "stopped_by_signal",
    "stopped_error",
    "watch_for",
]

_STDERR_TAIL_LINES = 20

_CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT")


def watch_for(spec: Any) -> Watch:
    """The watch for one launch of ``spec`` (a LaunchSpec)."""
    return Watch(spec.timeout, spec.hang_timeout)


def failed_error(
    name: str,
    failures: dict[int, ProcessFailure],
    run_dir: str,
    attempt: int,
    stderr_files: dict[int, str],
    exits: dict[int, tuple[int, float]],
    watch: Watch | None,
    restarts_used: int = 0,
    reimports_main: bool = False,
) -> _failures.WorkerFailedError:
    """Merge torch's per-rank failures with the reports our workers wrote and the diagnosis.

    Args:
        name: what was launched (the function's name).
        failures: the failed ranks the agent saw, by global rank.
        run_dir: the attempt's run folder, where workers wrote their reports.
        attempt: the attempt whose reports to read.
        stderr_files: local rank -> stderr log file, for processes that died silently.
        exits: local rank -> (true exit status, when it was seen), for every worker
            that ended, including those the launcher stopped.
        watch: the launch's diagnosis (stacks at the stop, memory); None without one.
        restarts_used: restarts spent on failures before this attempt (all of them).
        reimports_main: workers import the launcher's main module again (a function
            launched with spawn or forkserver), so a missing main guard can explain a
            silent failure.
    """
    details: dict[int, _failures.RankFailure] = {}
    exceptions: dict[int, BaseException] = {}
    reports = _read_reports(run_dir, attempt)
    for rank, report in reports.items():
        failures.setdefault(rank, _reported_failure(report))
    for rank, failure in failures.items():
        report = reports.get(rank, {})
        exc = _unpickle(report.get("exception"))
        if exc is not None:
            exceptions[rank] = exc
        detail = _detail(rank, failure, report, stderr_files, exits, reimports_main)
        stderr_file = stderr_files.get(failure.local_rank)
        details[rank] = _explained(detail, run_dir, attempt, watch, stderr_file)
    started = any(n.startswith(_rundir.started_prefix(attempt)) for n in os.listdir(run_dir))
    stacks = watch.stacks if watch is not None else {}
    # a rank that failed on its own says where in its traceback; its stack at the
    # stop would show it writing that report
    stacks = {r: text for r, text in stacks.items() if not _own_failure(details.get(r))}
    return _failures.WorkerFailedError(
        name, failures, details, exceptions, not started, stacks, restarts_used
    )


def _own_failure(detail: _failures.RankFailure | None) -> bool:
    return detail is not None and bool(detail.exc_type) and bool(detail.traceback)


def _explained(
    detail: _failures.RankFailure,
    run_dir: str,
    attempt: int,
    watch: Watch | None,
    stderr_file: str | None = None,
) -> _failures.RankFailure:
    """``detail`` with the Python stack of a native crash, or the cause of a SIGKILL."""
    if detail.signal_name in _CRASH_SIGNALS and not detail.traceback:
        crash_file = _rundir.crash_path(run_dir, attempt, detail.local_rank)
        crash = _diagnosis.crash_stack(crash_file, stderr_file)
        if crash:
            message = f"crashed in native code ({detail.signal_name}); its Python stack is below"
            return dataclasses.replace(detail, traceback=crash, message=message)
    if detail.signal_name == "SIGKILL" and watch is not None:
        cause = watch.memory.explain_kill(detail.rank)
        if cause:
            return dataclasses.replace(detail, message=cause)
    return detail


def stopped_error(
    name: str, stop: Stopped, watch: Watch, group: WorkerGroup
) -> _failures.LaunchTimeoutError:
    """The error for a launch icelaunch stopped itself (``timeout``, ``hang_timeout``)."""
    stacks = watch.stacks
    running = set(watch.running) or {w.global_rank for w in group.workers}
    failures: dict[int, ProcessFailure] = {}
    details: dict[int, _failures.RankFailure] = {}
    for w in group.workers:
        if w.global_rank not in running:
            continue
        failure = ProcessFailure(
            local_rank=w.local_rank, pid=w.id or -1, exitcode=-15, error_file=""
        )
        failure.message = f"stopped by icelaunch: {stop.message}"
        failures[w.global_rank] = failure
        details[w.global_rank] = _failures.RankFailure(
            rank=w.global_rank,
            local_rank=w.local_rank,
            exitcode=-15,
            signal_name="SIGTERM",
            exc_type=None,
            message=failure.message,
            traceback=stacks.get(w.global_rank, ""),
        )
    return _failures.LaunchTimeoutError(
        name, failures, details, {}, stacks=stacks, reason=stop.reason, why=stop.message
    )


def stopped_by_signal(sig: signal.Signals, outcome: StopOutcome | None) -> LaunchStopped:
    """The :class:`LaunchStopped` for a stop ``sig`` asked for; how each rank ended."""
    if outcome is None or not outcome.exits:
        text = f"the launch was stopped by {sig.name} before its workers ran (or restarted)"
        return LaunchStopped.of(text, int(sig))
    parts = []
    for what, ranks in _by_ending(outcome).items():
        parts.append(f"{_ranks_text(ranks)} {what}")
    grace = f"shutdown_timeout={outcome.grace_s:g} s"
    text = f"the launch was stopped by {sig.name} (grace: {grace}): " + "; ".join(parts)
    if outcome.killed and outcome.cut_short is not None:
        text += f" ({outcome.cut_short.name} again ended the grace)"
    stopped = LaunchStopped.of(text, int(sig), outcome.exits, frozenset(outcome.killed))
    stopped.values = outcome.values
    return stopped


def _by_ending(outcome: StopOutcome) -> dict[str, list[int]]:
    """Ranks grouped by how they ended: exited on their own, ended by a signal, killed."""
    groups: dict[str, list[int]] = {}
    for rank, code in sorted(outcome.exits.items()):
        if rank in outcome.killed:
            what = "still running at the end of the grace, killed (SIGKILL)"
        elif code == 0:
            what = "exited on their own (status 0)"
        elif code < 0:
            what = f"ended by {_signal_name(code)}"
        else:
            what = f"exited with status {code}"
        groups.setdefault(what, []).append(rank)
    return groups


def _ranks_text(ranks: list[int]) -> str:
    """``rank 2`` or ``ranks 0, 1, 3``."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks)


def print_interrupted(
    watch: Watch | None, sig: signal.Signals, outcome: StopOutcome | None = None
) -> None:
    """Where the running ranks were when the stop came, on stderr: on Ctrl-C (someone
    at the terminal wants to know), or when a rank had to be killed."""
    if watch is None or not watch.running:
        return
    killed = outcome is not None and bool(outcome.killed)
    if sig != signal.SIGINT and not killed:
        return  # a clean preemption: every rank exited on its own
    what = "interrupted" if sig == signal.SIGINT else f"stopped by {sig.name}"
    print(
        f"icelaunch: {what} (pid {os.getpid()}); where the running ranks were:\n{watch.grouped()}",
        file=sys.stderr,
        flush=True,
    )


def _signal_name(exitcode: int) -> str | None:
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _read_reports(run_dir: str, attempt: int) -> dict[int, dict[str, Any]]:
    """Failure reports the workers of one attempt wrote, by global rank."""
    reports: dict[int, dict[str, Any]] = {}
    prefix = _rundir.report_prefix(attempt)
    for name in sorted(os.listdir(run_dir)):
        if not (name.startswith(prefix) and name.endswith(_rundir.REPORT_SUFFIX)):
            continue
        try:
            with open(os.path.join(run_dir, name), "rb") as fh:
                report = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError):
            continue
        reports[int(report["rank"])] = report
    return reports


def _tail(path: str | None) -> str:
    if not path or not os.path.isfile(path):
        return ""
    with open(path, errors="replace") as fh:
        return "".join(fh.readlines()[-_STDERR_TAIL_LINES:])


def _unpickle(data: bytes | None) -> BaseException | None:
    if data is None:
        return None
    try:
        exc = pickle.loads(data)
    except Exception:
        return None
    return exc if isinstance(exc, BaseException) else None


def _detail(
    rank: int,
    failure: ProcessFailure,
    report: dict[str, Any],
    stderr_files: dict[int, str],
    exits: dict[int, tuple[int, float]],
    reimports_main: bool = False,
) -> _failures.RankFailure:
    """One rank's failure from what the agent saw, our report, and torch's error file."""
    code, seen = exits.get(failure.local_rank, (failure.exitcode, float(failure.timestamp)))
    if failure.pid != -1:
        code, seen = failure.exitcode, float(failure.timestamp)  # seen when it failed
    torch_message, torch_traceback = _error_file(failure)
    tail = "" if report or torch_traceback else _tail(stderr_files.get(failure.local_rank))
    return _failures.RankFailure(
        rank=rank,
        local_rank=failure.local_rank,
        exitcode=code,
        signal_name=_signal_name(code),
        exc_type=report.get("exc_type"),
        message=report.get("message") or _message(torch_message, code, tail),
        traceback=report.get("traceback") or torch_traceback,
        stderr_tail=tail,
        time=float(report.get("time", seen)),
        no_traceback_hint=_no_traceback_hint(code, reimports_main),
    )


def _error_file(failure: ProcessFailure) -> tuple[str, str]:
    """(message, traceback) from torch's failure record, whose message may be the
    error file's dict (written by torch's ``@record``)."""
    message: Any = failure.message
    if isinstance(message, dict):
        extra = message.get("extraInfo") or {}
        return str(message.get("message", "")), str(extra.get("py_callstack") or "")
    return str(message or ""), ""


def _no_traceback_hint(exitcode: int, reimports_main: bool) -> str:
    """What to say for a rank with neither a traceback nor stderr output."""
    if exitcode == -signal.SIGTERM:
        return _failures.STOPPED
    return _failures.NO_TRACEBACK_REIMPORT if reimports_main else _failures.NO_TRACEBACK


def _message(message: str, exitcode: int, stderr_tail: str) -> str:
    """torch's message, unless it is only its hint about @record: then the last stderr line."""
    if message and not message.startswith("To enable traceback"):
        return message
    lines = [line for line in stderr_tail.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exited with code {exitcode}"


def describe(run_dir: str, attempt: int, rank: int, failure: ProcessFailure) -> str:
    """One line for a failed rank of ``attempt``: status, exception type and message."""
    report = _read_reports(run_dir, attempt).get(rank, {})
    return _detail(rank, failure, report, {}, {}).summary()


def _reported_failure(report: dict[str, Any]) -> ProcessFailure:
    """A torch failure record for a rank that raised but was stopped before torch saw it."""
    failure = ProcessFailure(local_rank=report["local_rank"], pid=-1, exitcode=1, error_file="")
    failure.message = f"{report['exc_type']}: {report['message']}"
    failure.timestamp = int(report["time"])
    return failure
