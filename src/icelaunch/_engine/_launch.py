"""The frame of one launch: its job folder, the caller's process state, port retries.

``run_launch`` runs a :class:`Target` (what the workers run, from one of the
doors in ``_doors``) with the launch's signals (``_signals``, held since the
launch began): it creates the job folder, keeps the caller's environment,
retries a port taken meanwhile (or gloo's intermittent connection failure),
runs one attempt (``_attempt``) per run folder, and after a success defers the
teardown (``_teardown``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from icelaunch import _watching
from icelaunch._engine import _hygiene, _ports, _setup, _signals, _stop, _teardown
from icelaunch._engine._attempt import run_attempt
from icelaunch._engine._failures import WorkerFailedError
from icelaunch._engine._watched import watched
from icelaunch._errors import LaunchStopped, PortBusyError
from icelaunch._spec import LaunchSpec

logger = logging.getLogger(__name__)

SETUP_RETRIES = 2  # launches again after gloo's intermittent connection failure


@dataclass(frozen=True)
class Target:
    """What the workers run: torch's entrypoint and arguments, and how they end."""

    name: str
    entrypoint: Callable[..., Any] | str
    args: tuple[Any, ...]
    reports_done: bool
    mark: _stop.JobMark | None = None  # in every worker's environment
    console: str = ""  # the console relay's address, known to the workers
    #: variables the launcher's own environment carries while the launch runs (put
    #: back after it), so that torch starts the workers with them: only what must be
    #: in a worker's environment from its exec on (see ``_doors.launch_command``)
    inherited: tuple[tuple[str, str], ...] = ()


def run_launch(
    spec: LaunchSpec, target: Callable[[str], Target], signals: _signals.LaunchSignals
) -> dict[int, Any]:
    """Run the launch; after a success its teardown (``later``) finishes in the
    background (see ``_teardown``), after anything else before this returns."""
    _setup.make_log_dir(spec.log_dir)
    if any(d.startswith("cuda") for d in spec.devices):
        _teardown.wait()  # earlier workers may still hold device memory
    later = contextlib.ExitStack()
    try:
        with later:
            job_dir = later.enter_context(_hygiene.job_directory())
            with (
                watched(spec, job_dir) as monitor,
                _hygiene.no_torch_temp_files(),
                _hygiene.torch_logs_without_tracebacks(),
            ):
                values = _launch_with_port_retry(spec, target, job_dir, later, signals, monitor)
            if _private_rendezvous(spec):
                _teardown.defer(later.pop_all(), name=spec.role)
            return values
    except LaunchStopped as stop:
        signals.restore()
        _redeliver(signal.Signals(stop.signal))  # the caller's own handlers are back now
        raise


def _private_rendezvous(spec: LaunchSpec) -> bool:
    """Whether the launch's rendezvous is its own (one node, a port chosen for it).

    Only then may its teardown finish after the call returned: a rendezvous at a
    given endpoint (c10d, etcd, several nodes) must be closed before a next launch
    can use the same one.
    """
    if spec.max_nodes != 1:
        return False
    return spec.standalone or (spec.rdzv_backend == "static" and spec.master_port is None)


def _redeliver(sig: signal.Signals) -> None:
    """Let the caller's own handler of ``sig`` run, now that the workers are stopped.

    At the default disposition nothing more happens: the ``LaunchStopped`` raised
    next ends the program with 128 + ``sig`` (or as Ctrl-C for SIGINT) if uncaught.
    """
    handler = signal.getsignal(sig)
    if not callable(handler) or handler is signal.default_int_handler:
        return
    with contextlib.suppress(ValueError):  # not the main thread: nothing to re-raise to
        signal.raise_signal(sig)


def _launch_with_port_retry(
    spec: LaunchSpec,
    target: Callable[[str], Target],
    job_dir: str,
    later: contextlib.ExitStack,
    signals: _signals.LaunchSignals,
    monitor: _watching.Monitor,
) -> dict[int, Any]:
    fixed = spec.master_port if spec.master_port is not None else _ports.agreed_port(spec)
    chosen = fixed is None or spec.standalone
    setup_retries = SETUP_RETRIES if spec.max_nodes == 1 else 0
    for attempt in range(_ports.ATTEMPTS + setup_retries):
        port = _ports.free_port() if chosen or fixed is None else fixed
        run_dir = os.path.join(job_dir, str(attempt))
        os.makedirs(run_dir)
        this = target(run_dir)
        monitor.recorder.target = this.name
        try:
            with _hygiene.carried(this.inherited), _port_errors(port):
                return run_attempt(spec, this, run_dir, port, later, signals, monitor)
        except PortBusyError:
            if not chosen:
                raise
            logger.debug("port %s was taken meanwhile; trying another", port)
        except WorkerFailedError as err:
            if not (this.reports_done and err.transient_setup_failure and setup_retries):
                raise
            setup_retries -= 1
            logger.warning("gloo could not connect the workers (%s); launching again", err.first)
    raise PortBusyError(f"no free port found after {_ports.ATTEMPTS} attempts")


@contextlib.contextmanager
def _port_errors(port: int) -> Iterator[None]:
    """Turn torch's "address already in use" into a PortBusyError naming the port."""
    try:
        yield
    except WorkerFailedError:
        raise
    except Exception as exc:
        busy = _ports.as_port_busy(exc, port)
        if busy is exc:
            raise
        raise busy from exc
