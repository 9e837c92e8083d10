"""WorkerFailedError: every failed rank, with what killed it and where."""

from __future__ import annotations

import functools
import os
import pickle
import signal
from dataclasses import dataclass
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from icelaunch._worker import report_path, started_path

_STDERR_TAIL_LINES = 20
_NO_TRACEBACK = (
    "(no traceback: the process ended without a Python exception; its own output, above, says why)"
)
_NO_TRACEBACK_REIMPORT = (
    "(no traceback from the launched function: the process ended before it could "
    "start or without raising; its own output, above, says why. A script that "
    'launches must do so under `if __name__ == "__main__":`, since workers '
    "import it again)"
)
_STOPPED = (
    "(no traceback: the process was stopped with SIGTERM, by the launcher once another "
    "worker had failed, or from outside, e.g. by a scheduler or `kill`)"
)


@dataclass(frozen=True)
class RankFailure:
    """How one worker failed."""

    rank: int
    local_rank: int
    exitcode: int
    signal_name: str | None
    exc_type: str | None
    message: str
    traceback: str
    stderr_tail: str = ""
    time: float = 0.0
    no_traceback_hint: str = _NO_TRACEBACK

    def summary(self) -> str:
        """One line: rank, exit status and the error."""
        how = f"signal {self.signal_name}" if self.signal_name else f"exit code {self.exitcode}"
        what = f"{self.exc_type}: {self.message}" if self.exc_type else self.message
        return f"rank {self.rank} (local rank {self.local_rank}, {how}): {what}"


class WorkerFailedError(ChildFailedError):
    """Workers of a launch failed; ``details`` holds one :class:`RankFailure` per failed rank.

    ``exceptions`` maps a rank to the worker's original exception object when it
    could be pickled back, so callers can handle the original type.
    """

    def __init__(
        self,
        name: str,
        failures: dict[int, ProcessFailure],
        details: dict[int, RankFailure],
        exceptions: dict[int, BaseException],
        before_user_code: bool = False,
        stacks: dict[int, str] | None = None,
        restarts: int = 0,
    ) -> None:
        self.details = dict(sorted(details.items(), key=_failure_order))
        self.exceptions = exceptions
        #: no worker of this node got as far as calling the launched function
        self.before_user_code = before_user_code
        #: how many restarts were used up before this last, failed attempt
        self.restarts = restarts
        #: global rank -> Python stack (all threads) of each rank still running when
        #: icelaunch stopped it, taken just before
        self.stacks = dict(stacks or {})
        self._grouped = _diagnosis_view(self.stacks)
        super().__init__(name, failures)

    @property
    def ranks(self) -> list[int]:
        """The failed global ranks, sorted."""
        return sorted(self.details)

    @property
    def transient_setup_failure(self) -> bool:
        """Whether gloo failed to connect the ranks before any function started.

        A known intermittent failure of gloo's connection set-up (pytorch#53270):
        no user code ran, so the launch can safely be tried again.
        """
        signs = ("connectFullMesh", "Connection closed by peer", "Connection reset by peer")
        return self.before_user_code and any(
            sign in d.message for d in self.details.values() for sign in signs
        )

    @property
    def first(self) -> RankFailure:
        """The failure that happened first (the likely root cause)."""
        return next(iter(self.details.values()))

    def format_msg(self, boarder_delim: str = "=", section_delim: str = "-") -> str:
        """The readable report: a summary line per rank, then each traceback."""
        used = f" (after {self.restarts} restart(s): max_restarts used up)" if self.restarts else ""
        lines = [f"{len(self.details)} worker(s) of {self.name} failed{used}, first to last:"]
        lines += [f"  {d.summary()}" for d in self.details.values()]
        for d in self.details.values():
            lines.append(f"\n{section_delim * 20} rank {d.rank} {section_delim * 20}")
            if d.traceback:
                lines.append(d.traceback.rstrip())
            elif d.stderr_tail:
                lines.append(f"last stderr lines:\n{d.stderr_tail.rstrip()}")
            elif d.rank in self.stacks:
                lines.append("(stopped by icelaunch while running: its stack is below)")
            else:
                lines.append(d.no_traceback_hint)
        if self._grouped:
            lines.append(f"\nwhere the running ranks were when they were stopped:\n{self._grouped}")
        return "\n".join(lines)

    def __reduce__(self) -> Any:
        args = (
            self.name,
            self.failures,
            self.details,
            self.exceptions,
            self.before_user_code,
            self.stacks,
            self.restarts,
        )
        return (type(self), args)


class LaunchTimeoutError(WorkerFailedError, TimeoutError):
    """The launch passed its ``timeout``, or was judged hung (``hang_timeout``).

    The message says which and why, with the grouped stacks of the ranks;
    ``stacks`` holds each rank's stack, ``reason`` is ``"timeout"`` or ``"hang"``.
    """

    def __init__(self, *args: Any, reason: str = "timeout", why: str = "", **kwargs: Any) -> None:
        """``WorkerFailedError``'s arguments, then why the launch was stopped."""
        self.reason = reason
        self.why = why
        super().__init__(*args, **kwargs)

    def format_msg(self, boarder_delim: str = "=", section_delim: str = "-") -> str:
        """Why the launch was stopped, then where every rank was."""
        lines = [f"{self.name} was stopped: {self.why}; all of its workers were stopped."]
        lines.append(f"where the ranks were:\n{self._grouped or '(no rank answered)'}")
        return "\n".join(lines)

    def __reduce__(self) -> Any:
        rebuild = functools.partial(type(self), reason=self.reason, why=self.why)
        return (rebuild, super().__reduce__()[1])


def _diagnosis_view(stacks: dict[int, str]) -> str:
    """The grouped view of ``stacks`` (stack text by rank), ranks with one stack shown once."""
    from icelaunch._diagnosis import _format

    return _format.group_texts(stacks)


def _failure_order(item: tuple[int, RankFailure]) -> tuple[bool, float, int]:
    """Root causes first, then by the time each rank failed.

    Collateral failures never come first: a rank an agent stopped (SIGTERM without
    an exception of its own), or one whose connection to a peer broke because that
    peer had died (gloo's "Connection reset by peer", ...).
    """
    rank, detail = item
    return (is_collateral(detail), detail.time, rank)


_COLLATERAL_SIGNS = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Connection refused",
    "Broken pipe",
    "Connection aborted",
    "Software caused connection abort",
    "Socket closed",
)


def is_collateral(detail: RankFailure) -> bool:
    """Whether ``detail`` looks like the consequence of another rank's failure."""
    if detail.signal_name == "SIGTERM" and detail.exc_type is None:
        return True  # stopped by an agent
    return any(sign in detail.message for sign in _COLLATERAL_SIGNS)


def _signal_name(exitcode: int) -> str | None:
    if exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _read_reports(report_dir: str, restart_count: int) -> dict[int, dict[str, Any]]:
    """Failure reports the workers of one attempt wrote, by global rank."""
    reports: dict[int, dict[str, Any]] = {}
    prefix = os.path.basename(report_path(report_dir, restart_count, 0)).rsplit("-", 1)[0]
    for name in sorted(os.listdir(report_dir)):
        if not (name.startswith(prefix + "-") and name.endswith(".pkl")):
            continue
        try:
            with open(os.path.join(report_dir, name), "rb") as fh:
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


def build_error(
    name: str,
    failures: dict[int, ProcessFailure],
    report_dir: str,
    restart_count: int,
    stderr_files: dict[int, str],
    exits: dict[int, tuple[int, float]] | None = None,
    restarts_used: int = 0,
    reimports_main: bool = False,
) -> WorkerFailedError:
    """Merge torch's per-rank failures with the reports our workers wrote.

    Args:
        name: what was launched (the function's name).
        failures: the failed ranks the agent saw, by global rank.
        report_dir: where workers wrote their reports.
        restart_count: the attempt whose reports to read.
        stderr_files: local rank -> stderr log file, for processes that died silently.
        exits: local rank -> (true exit status, when it was seen), for every worker
            that ended, including those the launcher stopped.
        restarts_used: restarts spent on failures before this attempt (all of them).
        reimports_main: workers import the launcher's main module again (a function
            launched with spawn or forkserver), so a missing main guard can explain a
            silent failure.
    """
    details: dict[int, RankFailure] = {}
    exceptions: dict[int, BaseException] = {}
    reports = _read_reports(report_dir, restart_count)
    for rank, report in reports.items():
        failures.setdefault(rank, _reported_failure(report))
    for rank, failure in failures.items():
        report = reports.get(rank, {})
        exc = _unpickle(report.get("exception"))
        if exc is not None:
            exceptions[rank] = exc
        details[rank] = _detail(rank, failure, report, stderr_files, exits or {}, reimports_main)
    started_prefix = os.path.basename(started_path(report_dir, restart_count, 0))[:-1]
    started = any(n.startswith(started_prefix) for n in os.listdir(report_dir))
    return WorkerFailedError(
        name, failures, details, exceptions, before_user_code=not started, restarts=restarts_used
    )


def _detail(
    rank: int,
    failure: ProcessFailure,
    report: dict[str, Any],
    stderr_files: dict[int, str],
    exits: dict[int, tuple[int, float]],
    reimports_main: bool = False,
) -> RankFailure:
    """One rank's failure from what the agent saw, our report, and torch's error file."""
    code, seen = exits.get(failure.local_rank, (failure.exitcode, float(failure.timestamp)))
    if failure.pid != -1:
        code, seen = failure.exitcode, float(failure.timestamp)  # seen when it failed
    torch_message, torch_traceback = _error_file(failure)
    tail = "" if report or torch_traceback else _tail(stderr_files.get(failure.local_rank))
    return RankFailure(
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
        return _STOPPED
    return _NO_TRACEBACK_REIMPORT if reimports_main else _NO_TRACEBACK


def _message(message: str, exitcode: int, stderr_tail: str) -> str:
    """torch's message, unless it is only its hint about @record: then the last stderr line."""
    if message and not message.startswith("To enable traceback"):
        return message
    lines = [line for line in stderr_tail.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exited with code {exitcode}"


def describe(report_dir: str, attempt: int, rank: int, failure: ProcessFailure) -> str:
    """One line for a failed rank of ``attempt``: status, exception type and message."""
    report = _read_reports(report_dir, attempt).get(rank, {})
    return _detail(rank, failure, report, {}, {}).summary()


def _reported_failure(report: dict[str, Any]) -> ProcessFailure:
    """A torch failure record for a rank that raised but was stopped before torch saw it."""
    failure = ProcessFailure(local_rank=report["local_rank"], pid=-1, exitcode=1, error_file="")
    failure.message = f"{report['exc_type']}: {report['message']}"
    failure.timestamp = int(report["time"])
    return failure
