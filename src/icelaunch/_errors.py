"""Exception hierarchy of icelaunch.

::

    Exception
    ├── TypeError
    │   └── ConfigurableError            wrong use of a Configurable (too early, unknown name)
    │       └── FrozenError              changing a frozen Configurable
    ├── RuntimeError
    │   ├── NotInWorkerError             a worker-only property read outside a worker
    │   ├── LaunchInterruptedError       SIGTERM, SIGHUP or SIGQUIT stopped a launch
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


class ConfigurableError(TypeError):
    """A Configurable was used in a way its state does not allow."""


class FrozenError(ConfigurableError):
    """A frozen Configurable was asked to change its arguments."""


class NotFrozenError(AttributeError):
    """A real attribute was read from a Configurable that is not frozen yet."""


class NotInWorkerError(RuntimeError):
    """A worker-only property was read outside a worker process."""


class LaunchInterruptedError(RuntimeError):
    """A signal (SIGTERM, SIGHUP, SIGQUIT) stopped the launch; its workers were stopped.

    ``signal`` is the signal number.
    """

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (str(self), self.signal))


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
