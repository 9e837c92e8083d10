"""Exception hierarchy of icelaunch.

::

    Exception
    BaseException
    ├── LaunchStopped                    a stop was asked for (a signal to the launcher):
    │   │                                the ranks had shutdown_timeout to exit on their own
    │   ├── (with KeyboardInterrupt)     for SIGINT (Ctrl-C)
    │   └── (with SystemExit)            for any other signal: uncaught, the process exits
    │                                    with 128 + the signal, silently
    Exception
    ├── TypeError
    │   └── ConfigurableError            wrong use of a Configurable (too early, unknown name)
    │       └── FrozenError              changing a frozen Configurable
    ├── RuntimeError
    │   ├── NotInWorkerError             a worker-only property read outside a worker
    │   ├── PortBusyError                the rendezvous port is taken
    │   ├── RendezvousTimeoutError       not every node joined the rendezvous in time
    │   ├── RendezvousClosedError        the rendezvous of this rdzv_id is closed (a finished run)
    │   └── ChildFailedError (torch)
    │       └── WorkerFailedError        workers of a launch failed (_engine/_failures.py:
    │           │                        it subclasses torch's, which only the engine imports)
    │           └── LaunchTimeoutError   timeout passed or the job hung (also a TimeoutError)
    └── ValueError                       bad launch arguments (raised as plain ValueError)

``AttributeError`` is also raised (as ``NotFrozenError``) for attributes read
before ``freeze()``, so ``hasattr`` keeps working on unfrozen configurables.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from typing import Any

#: the command's status when --timeout or --hang-timeout stopped the launch (as timeout(1))
EXIT_TIMEOUT = 124


def exit_status(exitcode: int) -> int:
    """A worker's exit code as the command's status: 128+N for signal N, never 0.

    >>> exit_status(3), exit_status(-9), exit_status(0)
    (3, 137, 1)
    """
    if exitcode < 0:
        return 128 - exitcode
    return exitcode or 1


class ConfigurableError(TypeError):
    """A Configurable was used in a way its state does not allow."""


class FrozenError(ConfigurableError):
    """A frozen Configurable was asked to change its arguments."""


class NotFrozenError(AttributeError):
    """A real attribute was read from a Configurable that is not frozen yet."""


class NotInWorkerError(RuntimeError):
    """A worker-only property was read outside a worker process."""


class LaunchStopped(BaseException):
    """A stop was asked for while the launch ran (a signal to the launcher).

    The ranks got the signal (or, where they call ``stop_requested()``, the
    request) and up to ``shutdown_timeout`` seconds to exit on their own; those
    still running then were killed. Not an ``Exception``: like Ctrl-C, a stop is
    not something a retry loop should swallow. The instance raised is also a
    ``KeyboardInterrupt`` for SIGINT, and a ``SystemExit`` for every other signal,
    whose ``code`` is ``exit_status`` (uncaught, the process exits with 128 + the
    signal, as schedulers expect).

    The instance is of a subclass (also named ``LaunchStopped``): test it with
    ``isinstance``, or catch it with ``except LaunchStopped``.

    Attributes:
        signal: the signal number that asked for the stop.
        exits: global rank -> exit status of this node's ranks (negative: a signal).
        killed_ranks: ranks still running when ``shutdown_timeout`` ran out (SIGKILL).
        clean_ranks: ranks whose process exited with status 0.
        values: global rank -> return value, for launched functions whose ranks
            returned during the grace (e.g. the step they saved).
        exit_status: 128 + ``signal``.
    """

    def __init__(
        self,
        message: str,
        signal: int,
        exits: Mapping[int, int] | None = None,
        killed_ranks: frozenset[int] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.signal = signal
        self.exits = dict(exits or {})
        self.killed_ranks = frozenset(killed_ranks)
        self.values: dict[int, Any] = {}

    @classmethod
    def of(
        cls,
        message: str,
        signal: int,
        exits: Mapping[int, int] | None = None,
        killed_ranks: frozenset[int] = frozenset(),
    ) -> LaunchStopped:
        """The exception to raise for a stop by ``signal`` (its class depends on it)."""
        kind = _Interrupted if signal == _signal.SIGINT else _Terminated
        return kind(message, signal, exits, killed_ranks)

    @property
    def exit_status(self) -> int:
        """128 + the signal: what a shell, SLURM or Kubernetes read as "stopped"."""
        return 128 + self.signal

    @property
    def clean_ranks(self) -> frozenset[int]:
        """The ranks whose process exited with status 0."""
        return frozenset(r for r, code in self.exits.items() if code == 0)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        args = (str(self), self.signal, self.exits, self.killed_ranks)
        return (LaunchStopped.of, args, {"values": self.values})


class _Interrupted(LaunchStopped, KeyboardInterrupt):
    """:class:`LaunchStopped` by SIGINT (Ctrl-C)."""


class _Terminated(LaunchStopped, SystemExit):
    """:class:`LaunchStopped` by any other signal; ``code`` is the exit status."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.code = self.exit_status


LaunchStopped.__module__ = "icelaunch"
for _kind in (_Interrupted, _Terminated):
    _kind.__module__ = "icelaunch"
    _kind.__qualname__ = _kind.__name__ = "LaunchStopped"

#: the name of :class:`LaunchStopped` before ``shutdown_timeout`` existed
LaunchInterruptedError = LaunchStopped


class PortBusyError(RuntimeError):
    """The rendezvous port is held by another process."""


class RendezvousTimeoutError(RuntimeError):
    """Not every expected node joined the rendezvous within its timeout.

    The message names the backend, endpoint, rdzv_id, expected nodes and the timeout;
    torch's own error (which may have no message) is the ``__cause__``.
    """


class RendezvousClosedError(RuntimeError):
    """The rendezvous of this ``rdzv_id`` is closed, e.g. a run with that id has finished.

    The message says to choose a new ``rdzv_id``; torch's own error is the ``__cause__``.
    """
