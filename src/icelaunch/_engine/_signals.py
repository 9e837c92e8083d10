"""The launcher's signals while a launch runs: held while it starts, then stops with a
grace, forwards, a second Ctrl-C.

From the launch's first step, before the engine imports torch, :func:`held` notes
every stop signal instead of letting the caller's handler raise at whatever bytecode
runs: that may be Python code torch's C++ runs (its import: ``torch._C._autograd_init``
imports modules), where a ``KeyboardInterrupt`` escapes as a C++ exception and ends
the process with SIGABRT, or numpy's import inside torch's, which swallows it. A stop
noted is raised as ``SignalException`` at the launch's next safe point: before the
rendezvous, in the wait for the fork server, when the workers start. A rendezvous
that waits for other nodes answers a stop at once (:meth:`LaunchSignals.answering`).

torch's agent installs its own handler (which raises ``SignalException``) when it
starts the workers; :meth:`LaunchSignals.install` puts ours in its place right
after, for every signal of the table in ``docs/failures.md``:

- **stop**: SIGTERM, SIGINT, SIGHUP, SIGQUIT (unless the caller ignores them),
  and SIGALRM, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGPWR, SIGSTKFLT, SIGIO,
  SIGPIPE where the caller left them at their default action (which would end
  the launcher). The first raises ``SignalException`` as torch's handler does,
  and the agent stops the workers with ``shutdown_timeout`` of grace; another
  one during that grace cuts it short.
- **forward**: SIGUSR1, SIGUSR2 (where at their default action) and the other
  signals named in ``TORCHELASTIC_SIGNALS_TO_HANDLE`` (torchrun's
  ``--signals-to-handle``) are passed on to the ranks; the launch goes on.

A stop can also come from a thread (the console's output was closed):
:meth:`LaunchSignals.request` notes it and wakes the agent, which raises it.

Handlers exist only in the main thread: a launch from another thread leaves
the process's handlers alone (its workers still end with the launcher). This
module imports no torch (the engine's face holds the signals before torch is
imported); ``SignalException`` is only raised once the launch runs torch's agent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from icelaunch import _rundir

logger = logging.getLogger(__name__)

_USUAL_STOPS = _rundir.stop_signals()
_OTHER_STOPS = _rundir.signal_numbers(_rundir.OTHER_STOP_SIGNALS)
_FORWARDS = _rundir.signal_numbers(_rundir.FORWARDED_SIGNALS)

#: what the agent does with a forwarded signal (passes it on to the ranks)
Forward = Callable[[signal.Signals], None]


class StopOutcome:
    """How the ranks of this node ended after a stop someone asked for (a signal)."""

    def __init__(self, sig: signal.Signals, grace_s: float) -> None:
        self.signal = sig
        self.grace_s = grace_s
        self.exits: dict[int, int] = {}  # global rank -> exit status
        self.killed: set[int] = set()  # global ranks killed when the grace ran out
        self.cut_short: signal.Signals | None = None  # the signal that ended the grace
        self.values: dict[int, Any] = {}  # global rank -> value, of ranks that returned


def chosen_signals(env: dict[str, str] | os._Environ[str]) -> frozenset[signal.Signals]:
    """The signals named in ``TORCHELASTIC_SIGNALS_TO_HANDLE`` (unknown names skipped).

    >>> sorted(s.name for s in chosen_signals({"TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGUSR1, X"}))
    ['SIGUSR1']
    """
    names = tuple(n.strip() for n in env.get(_rundir.SIGNALS_ENV, "").split(",") if n.strip())
    return _rundir.signal_numbers(names)


def is_stop(sig: int) -> bool:
    """Whether ``sig`` asks the launch to stop (rather than being passed on)."""
    return sig in _USUAL_STOPS or sig in _OTHER_STOPS


class LaunchSignals:
    """One launch's signal handling; ``requested`` is the stop signal asked for, if any."""

    def __init__(self, chosen: frozenset[signal.Signals] = frozenset()) -> None:
        self.requested: signal.Signals | None = None
        self.last: signal.Signals | None = None  # the latest stop signal (one that cut a grace)
        #: a stop is under way: further stop signals only cut its grace short
        self.stopping = False
        self._raised = False
        self._holding = False  # a stop signal is only noted (see hold)
        self._answering = False  # ... except in a wait for other nodes (see answering)
        self._deferring = False  # a stop signal is raised after a block (see deferred)
        self._noted_held = False  # a stop signal came while held
        self._restored = False
        self._count = 0
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.RLock()  # a second signal may come while a handler holds it
        self._forward: Forward | None = None
        self._main = threading.current_thread() is threading.main_thread()
        self._saved = self._callers_handlers(chosen) if self._main else {}
        self._stops, self._forwards = self._table(chosen)

    # -- the table ---------------------------------------------------------------------

    @staticmethod
    def _callers_handlers(chosen: frozenset[signal.Signals]) -> dict[signal.Signals, Any]:
        saved = {}
        for sig in _USUAL_STOPS | _OTHER_STOPS | _FORWARDS | chosen:
            with contextlib.suppress(ValueError, OSError):
                saved[sig] = signal.getsignal(sig)
        return saved

    def _table(
        self, chosen: frozenset[signal.Signals]
    ) -> tuple[frozenset[signal.Signals], frozenset[signal.Signals]]:
        """Which signals this launch handles as a stop, and which it passes on."""
        stops = set()
        forwards = set()
        for sig, handler in self._saved.items():
            at_default = handler == signal.SIG_DFL
            if sig in _USUAL_STOPS:
                if handler != signal.SIG_IGN or sig in chosen:
                    stops.add(sig)
            elif sig in _OTHER_STOPS:
                if at_default or sig in chosen:
                    stops.add(sig)
            elif at_default or sig in chosen:  # SIGUSR1/2, or chosen by the user
                forwards.add(sig)
        return frozenset(stops), frozenset(forwards)

    # -- installing --------------------------------------------------------------------

    def _in_main_thread(self) -> bool:
        return self._main and threading.current_thread() is threading.main_thread()

    def hold(self) -> None:
        """Until :meth:`install`: a stop signal is noted, and raised at the launch's next
        safe point (:meth:`raise_requested`); the other signals are the caller's."""
        self._holding = True
        self.stopping = False
        self._forward = None
        if not self._in_main_thread():
            return
        for sig, handler in self._saved.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if sig in self._stops:
                    signal.signal(sig, self._on_stop)
                elif handler is not None:
                    signal.signal(sig, handler)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """While held: a stop signal inside the block raises at once (a rendezvous that
        waits for other nodes, in Python steps); one noted before it raises here."""
        self._answering = True
        try:
            self.raise_requested()
            yield
        finally:
            self._answering = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A stop signal inside the block is noted, and raised after it: the block must
        not be cut in two (e.g. a multiprocessing Event half set)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        self.raise_requested()

    def install(self, forward: Forward) -> None:
        """Put our handlers in place (after torch's agent installed its own)."""
        self._forward = forward
        self._holding = False
        if not self._in_main_thread():
            return
        for sig, handler in self._saved.items():
            with contextlib.suppress(ValueError, OSError):
                if sig in self._stops:
                    signal.signal(sig, self._on_stop)
                elif sig in self._forwards:
                    signal.signal(sig, self._on_forward)
                elif handler is not None:
                    signal.signal(sig, handler)  # e.g. a SIGINT the caller ignores

    def deliver(self, sig: int) -> None:
        """Act on ``sig`` as if it arrived now (one noted while the workers started)."""
        if sig in self._stops:
            self._on_stop(sig, None)
        elif sig in self._forwards:
            self._on_forward(sig, None)

    def restore(self) -> None:
        """Put the caller's handlers back and close the wake-up pipe (once)."""
        self._forward = None  # no cycle through the agent: it is freed as soon as unused
        self._holding = False
        if self._restored:
            return
        self._restored = True
        if self._in_main_thread():
            for sig, handler in self._saved.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    if handler is not None:
                        signal.signal(sig, handler)
        with self._lock:  # a late request() must not write to a reused descriptor
            fds, self._read, self._write = (self._read, self._write), -1, -1
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def unanswered(self) -> signal.Signals | None:
        """A stop signal that was noted but never raised (the launch ended first)."""
        if self._noted_held and not self._raised and self._in_main_thread():
            return self.requested
        return None

    # -- what arrives ------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        sig = self._note(signum)
        if self._holding and not self._answering:
            self._noted_held = True
            return  # raised at the launch's next safe point
        if self._deferring:
            return  # raised after the block
        if not self.stopping and not self._raised:
            self._raised = True
            raise _signal_exception(f"Process {os.getpid()} got signal: {sig}", sig)

    def _on_forward(self, signum: int, frame: FrameType | None) -> None:
        if self._forward is not None:
            self._forward(signal.Signals(signum))

    def request(self, sig: signal.Signals) -> None:
        """Ask for a stop from any thread; the agent raises it at its next look."""
        self._note(sig)

    def _note(self, signum: int) -> signal.Signals:
        sig = signal.Signals(signum)
        with self._lock:
            self._count += 1
            self.last = sig
            if self.requested is None:
                self.requested = sig
            with contextlib.suppress(OSError):
                os.write(self._write, b"s")
        return sig

    def raise_requested(self) -> None:
        """Raise a stop that was asked for from a thread (not yet raised)."""
        if self.requested is not None and not self.stopping and not self._raised:
            self._raised = True
            sig = self.requested
            raise _signal_exception(f"Process {os.getpid()} was asked to stop ({sig.name})", sig)

    def fileno(self) -> int:
        """Readable when a stop signal arrived since the last :meth:`drain`."""
        return self._read

    def drain(self) -> None:
        """Forget the wake-ups so far (a grace starts: only a new signal cuts it short)."""
        with contextlib.suppress(OSError):
            while os.read(self._read, 4096):
                pass


def _signal_exception(message: str, sig: signal.Signals) -> BaseException:
    """torch's ``SignalException``, which its agent answers by stopping the workers
    (torch is imported by the time a stop is raised: see :meth:`LaunchSignals.hold`)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    return SignalException(message, sigval=sig)


@contextlib.contextmanager
def held() -> Iterator[LaunchSignals]:
    """One launch's signals, held from its first step (:meth:`LaunchSignals.hold`).

    At its end the caller's handlers are back; a stop signal that was noted but never
    raised (the launch ended otherwise first) goes to the caller's handler then.
    """
    signals = LaunchSignals(chosen_signals(os.environ))
    signals.hold()
    try:
        yield signals
    finally:
        signals.restore()
        sig = signals.unanswered()
        if sig is not None:
            signal.raise_signal(sig)
