"""Launcher side: what the engine raises and prints when it stops workers."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from torch.distributed.elastic.agent.server.api import WorkerGroup
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from icelaunch import _failures
from icelaunch._diagnosis import _files, _format
from icelaunch._diagnosis._watch import Stopped, Watch

__all__ = ["Stopped", "failed_error", "print_interrupted", "stopped_error", "watch_for"]

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
    """torch's failures and the workers' reports, with stacks, crash stacks and OOM causes."""
    err = _failures.build_error(
        name, failures, run_dir, attempt, stderr_files, exits, restarts_used, reimports_main
    )
    details = {
        rank: _explained(detail, run_dir, attempt, watch) for rank, detail in err.details.items()
    }
    stacks = watch.stacks if watch is not None else {}
    # a rank that failed on its own says where in its traceback; its stack at the
    # stop would show it writing that report
    stacks = {r: text for r, text in stacks.items() if not _own_failure(details.get(r))}
    return _failures.WorkerFailedError(
        name, err.failures, details, err.exceptions, err.before_user_code, stacks, err.restarts
    )


def _own_failure(detail: _failures.RankFailure | None) -> bool:
    return detail is not None and bool(detail.exc_type) and bool(detail.traceback)


def _explained(
    detail: _failures.RankFailure, run_dir: str, attempt: int, watch: Watch | None
) -> _failures.RankFailure:
    """``detail`` with the Python stack of a native crash, or the cause of a SIGKILL."""
    if detail.signal_name in _CRASH_SIGNALS and not detail.traceback:
        crash = crash_stack(_files.crash_path(run_dir, attempt, detail.local_rank))
        if crash:
            message = f"crashed in native code ({detail.signal_name}); its Python stack is below"
            return dataclasses.replace(detail, traceback=crash, message=message)
    if detail.signal_name == "SIGKILL" and watch is not None:
        cause = watch.memory.explain_kill(detail.rank)
        if cause:
            return dataclasses.replace(detail, message=cause)
    return detail


def crash_stack(path: str) -> str:
    """The Python stack faulthandler wrote at a native crash, as the user reads it."""
    try:
        with open(path, errors="replace") as fh:
            dump = fh.read()
    except OSError:
        return ""
    if not dump.strip():
        return ""
    first = dump.strip().splitlines()[0]
    return f"{first} (Python stack at the crash, most recent call last):\n" + (
        _format.stack_text(dump)
    )


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


def print_interrupted(watch: Watch | None) -> None:
    """On Ctrl-C or SIGTERM: where the running ranks were, on stderr."""
    if watch is None or not watch.running:
        return
    print(
        f"icelaunch: interrupted (pid {os.getpid()}); where the running ranks were:\n"
        f"{watch.grouped()}",
        file=sys.stderr,
        flush=True,
    )
