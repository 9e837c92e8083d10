"""WorkerFailedError: every failed rank, with what killed it and where.

The classes only; ``_report`` builds them from what the agent saw, the workers'
reports, torch's error files and the diagnosis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from icelaunch import _diagnosis

NO_TRACEBACK = (
    "(no traceback: the process ended without a Python exception; its own output, above, says why)"
)
NO_TRACEBACK_REIMPORT = (
    "(no traceback from the launched function: the process ended before it could "
    "start or without raising; its own output, above, says why. A script that "
    'launches must do so under `if __name__ == "__main__":`, since workers '
    "import it again)"
)
STOPPED = (
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
    no_traceback_hint: str = NO_TRACEBACK

    def summary(self) -> str:
        """One line: rank, exit status and the error."""
        how = f"signal {self.signal_name}" if self.signal_name else f"exit code {self.exitcode}"
        what = f"{self.exc_type}: {self.message}" if self.exc_type else self.message
        return f"rank {self.rank} (local rank {self.local_rank}, {how}): {what}"


class WorkerFailedError(ChildFailedError):
    """Workers of a launch failed; ``details`` holds one :class:`RankFailure` per failed rank.

    Shown and pickled as ``icelaunch.WorkerFailedError``, wherever it is defined.

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
    return _diagnosis.group_texts(stacks)


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


# the public names: tracebacks and pickles do not depend on where the classes live
WorkerFailedError.__module__ = "icelaunch"
LaunchTimeoutError.__module__ = "icelaunch"
