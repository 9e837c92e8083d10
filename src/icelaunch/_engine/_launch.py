"""The only package that talks to torch.distributed.elastic.

It assembles torch's public pieces (``RendezvousParameters``, the rendezvous
registry, ``WorkerSpec``, ``LocalElasticAgent``, ``DefaultLogsSpecs``) the way
``torch.distributed.launcher.api.launch_agent`` does, with these changes: the
agent wakes up as soon as a worker returns or dies instead of sleeping
``monitor_interval`` seconds, a worker that exits without returning counts as
failed instead of hanging the launch, every failed rank is reported, and the
caller's signal handlers, environment and temp folder are left as they were.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerSpec
from torch.distributed.elastic.multiprocessing.api import SignalException

from icelaunch import _console, _failures, _forkserver, _hints, _ports, _transfer, _worker
from icelaunch._diagnosis import _files, _report
from icelaunch._engine import (
    _hygiene,
    _logs,
    _rendezvous,
    _setup,
    _stop,
    _stores,
    _teardown,
    _waiting,
)
from icelaunch._engine._agent import Agent, DoneListener
from icelaunch._errors import LaunchInterruptedError
from icelaunch._spec import LaunchSpec, spec_to_json

logger = logging.getLogger(__name__)

LINE_PREFIX = "[rank${rank}]: "
SETUP_RETRIES = 2  # launches again after gloo's intermittent connection failure
SPEC_ENV = _worker.SPEC_ENV


@dataclass(frozen=True)
class _Target:
    """What the workers run: torch's entrypoint and arguments, and how they end."""

    name: str
    entrypoint: Callable[..., Any] | str
    args: tuple[Any, ...]
    reports_done: bool
    mark: _stop.JobMark | None = None  # in every worker's environment
    console: str = ""  # the console relay's address, known to the workers


def launch(spec: LaunchSpec, fn: Callable[..., Any], args: tuple[Any, ...]) -> dict[int, Any]:
    """Run ``fn(*args)`` in every worker of this node; return values by global rank.

    Raises:
        WorkerFailedError: workers failed and no restart was left.
        KeyboardInterrupt: the launching process got SIGINT.
    """
    name = getattr(fn, "__qualname__", None) or repr(fn)
    console = _console.new_address()
    mark = _stop.JobMark.new()
    sent: list[_transfer.Sent] = []

    def target(run_dir: str) -> _Target:
        notify = done_address(run_dir)
        env = {**os.environ, _console.ADDRESS_ENV: console, mark.name: mark.value}
        job = _worker.Job(
            fn, args, spec, run_dir, notify, _forkserver.uses_fork_server(spec), env=env
        )
        if spec.start_method == "fork":  # forked workers inherit the job: nothing is pickled
            return _Target(name, _worker.run, (job,), True, mark, console)
        sent.append(_payload(name, job))
        marked = (sent[-1].payload, _console.WorkerMark())  # the mark: see _console._early
        return _Target(name, _worker.run, marked, True, mark, console)

    _forkserver.warm_up(spec)  # the fork server imports torch while the rendezvous is set up
    try:
        return _launch(spec, target)
    finally:
        for each in sent:
            each.close()


def done_address(run_dir: str) -> str:
    """The abstract Unix socket on which workers of ``run_dir`` report "returned".

    Abstract (Linux): no file, so the length of TMPDIR does not matter.
    """
    return "\0icelaunch-" + hashlib.sha256(run_dir.encode()).hexdigest()[:32]


def _payload(name: str, job: _worker.Job) -> _transfer.Sent:
    """The job as bytes; functions from ``__main__``, lambdas and closures go by value
    (with their real file names), large tensors, arrays and bytes through shared
    memory (see ``_transfer``)."""
    try:
        data = _transfer.send(job)
    except _transfer.UnsupportedTransferError:
        raise
    except Exception as exc:
        raise TypeError(
            f"cannot send {name} and its arguments to the workers: {type(exc).__name__}: {exc}. "
            f"With start_method={job.spec.start_method!r} they are pickled; "
            f"{_hints.unpicklable_job(exc)}"
        ) from exc
    return data


def launch_command(spec: LaunchSpec, argv: list[str]) -> None:
    """Run the command ``argv`` (e.g. ``[sys.executable, "-u", "train.py"]``) in every worker.

    Workers find the spec in ``ICELAUNCH_SPEC`` (see :func:`icelaunch.current`).

    Raises:
        WorkerFailedError: workers failed and no restart was left.
    """
    name = " ".join(argv)
    wrapped = _script_command(argv)
    console = _console.new_address()

    mark = _stop.JobMark.new()

    def target(run_dir: str) -> _Target:
        os.environ[_files.RUN_DIR_ENV] = run_dir  # where the scripts leave their stacks
        return _Target(name, wrapped[0], tuple(wrapped[1:]), False, mark, console)

    with _hygiene.restored_process_state():  # what follows is inherited by the workers only
        os.environ[SPEC_ENV] = spec_to_json(spec)
        os.environ[mark.name] = mark.value
        os.environ[_console.ADDRESS_ENV] = console
        os.environ.setdefault("OMP_NUM_THREADS", str(spec.omp_num_threads))
        _launch(spec, target)


def _script_command(argv: list[str]) -> list[str]:
    """``argv`` run through :mod:`icelaunch._script`, which sets the worker up first
    and then runs it in the same process."""
    return [sys.executable, "-u", "-m", "icelaunch._script", *argv]


def _launch(spec: LaunchSpec, target: Callable[[str], _Target]) -> dict[int, Any]:
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
                _hygiene.restored_process_state(),
                _hygiene.no_torch_temp_files(),
                _hygiene.torch_logs_without_tracebacks(),
            ):
                _hygiene.respect_ignored_signals()
                values = _launch_with_port_retry(spec, target, job_dir, later)
            if _private_rendezvous(spec):
                _teardown.defer(later.pop_all(), name=spec.role)
            return values
    except SignalException as exc:
        _redeliver(exc.sigval)  # the caller's own handlers are back in place now
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
    """Let the caller's own disposition of ``sig`` act, now that the workers are stopped.

    SIGINT becomes KeyboardInterrupt; other signals are raised again, so their default
    action (ending the process) or the caller's handler applies; if that returns,
    LaunchInterruptedError says what happened.
    """
    if sig == signal.SIGINT:
        raise KeyboardInterrupt
    with contextlib.suppress(ValueError):  # not the main thread: nothing to re-raise to
        signal.raise_signal(sig)
    raise LaunchInterruptedError(
        f"the launch was stopped by {sig.name}; all of its workers were stopped", int(sig)
    )


def _launch_with_port_retry(
    spec: LaunchSpec, target: Callable[[str], _Target], job_dir: str, later: contextlib.ExitStack
) -> dict[int, Any]:
    fixed = spec.master_port if spec.master_port is not None else _ports.agreed_port(spec)
    chosen = fixed is None or spec.standalone
    setup_retries = SETUP_RETRIES if spec.max_nodes == 1 else 0
    for attempt in range(_ports.ATTEMPTS + setup_retries):
        port = _ports.free_port() if chosen or fixed is None else fixed
        run_dir = os.path.join(job_dir, str(attempt))
        os.makedirs(run_dir)
        this = target(run_dir)
        try:
            with _port_errors(port):
                return _run(spec, this, run_dir, port, later)
        except _ports.PortBusyError:
            if not chosen:
                raise
            logger.debug("port %s was taken meanwhile; trying another", port)
        except _failures.WorkerFailedError as err:
            if not (this.reports_done and err.transient_setup_failure and setup_retries):
                raise
            setup_retries -= 1
            logger.warning("gloo could not connect the workers (%s); launching again", err.first)
    raise _ports.PortBusyError(f"no free port found after {_ports.ATTEMPTS} attempts")


@contextlib.contextmanager
def _port_errors(port: int) -> Iterator[None]:
    """Turn torch's "address already in use" into a PortBusyError naming the port."""
    try:
        yield
    except _failures.WorkerFailedError:
        raise
    except Exception as exc:
        busy = _ports.as_port_busy(exc, port)
        if busy is exc:
            raise
        raise busy from exc


def _run(
    spec: LaunchSpec, target: _Target, run_dir: str, port: int, later: contextlib.ExitStack
) -> dict[int, Any]:
    """One attempt at ``port``; on success what is left to close moves to ``later``."""
    attempt = contextlib.ExitStack()
    with attempt:
        listener = DoneListener(done_address(run_dir))
        attempt.callback(listener.close)
        rdzv_params, master_addr, master_port = _setup.rendezvous_parameters(spec, port)
        worker_spec = WorkerSpec(
            role=spec.role,
            local_world_size=spec.nproc_per_node,
            entrypoint=target.entrypoint,
            args=target.args,
            rdzv_handler=_stores.create_handler(rdzv_params, port, spec.standalone),
            max_restarts=spec.max_restarts,
            monitor_interval=1e-6,  # the agent's own sleep; Agent waits on events instead
            master_addr=master_addr,
            master_port=master_port,
        )
        with (
            _rendezvous.explained(rdzv_params),
            _rendezvous.store_per_round(rdzv_params),
            _waiting.logged(rdzv_params),  # a static rendezvous says which nodes it waits for
        ):
            values = _run_agent(spec, target, worker_spec, listener, run_dir, attempt)
        later.enter_context(attempt.pop_all())
        return values
    raise AssertionError("unreachable")  # for type checkers: the block returns or raises


def _run_agent(
    spec: LaunchSpec,
    target: _Target,
    worker_spec: WorkerSpec,
    listener: DoneListener,
    run_dir: str,
    attempt: contextlib.ExitStack,
) -> dict[int, Any]:
    """Run torch's agent (with our :class:`Agent`); return the values by global rank.

    After a success the workers may still be ending: ``attempt`` gets what closes
    the run (the agent's :meth:`Agent.finish`, the relay, the rendezvous).
    """
    logs = _logs.RelayedLogs(spec.log_dir or os.path.join(run_dir, "logs"))
    relay = _console.Relay(target.console, _logs.routes(spec, logs))
    watch = _report.watch_for(spec)
    agent = Agent(
        listener=listener,
        poll_interval=spec.monitor_interval,
        reports_done=target.reports_done,
        spec=worker_spec,
        logs_specs=logs,
        start_method=_forkserver.torch_start_method(spec),
        describe=functools.partial(_failures.describe, run_dir),
        mark=target.mark,
        watch=watch,
        run_dir=run_dir,
        log_line_prefix_template=LINE_PREFIX,
    )
    shutdown_rdzv = True

    def close_rendezvous() -> None:
        if shutdown_rdzv:
            worker_spec.rdzv_handler.shutdown()

    attempt.callback(close_rendezvous)
    attempt.callback(relay.close)  # the workers' output to its end
    attempt.push(lambda exc_type, *_: agent.finish(0.0 if exc_type else _teardown.EXIT_WAIT_S))
    try:
        relay.start()
        try:
            result = agent.run()
        finally:
            if not agent.finishing:
                relay.close()  # before a failure is reported: its output comes first
        if result.is_failed():
            raise _failed(target.name, result, run_dir, agent, relay, _reimports_main(spec, target))
        relay.sync()  # what the workers wrote before they returned is shown before the value
        return dict(sorted(result.return_values.items()))
    except _report.Stopped as stop:
        raise _report.stopped_error(target.name, stop, watch, agent.get_worker_group()) from None
    except SignalException:
        shutdown_rdzv = False  # keep the rendezvous open for the other nodes
        _report.print_interrupted(watch)
        raise


def _reimports_main(spec: LaunchSpec, target: _Target) -> bool:
    """Whether the workers import the launcher's main module again (function launches
    that do not fork the launcher itself); scripts are started as they are."""
    return target.reports_done and spec.start_method != "fork"


def _failed(
    name: str,
    result: RunResult,
    run_dir: str,
    agent: Agent,
    relay: _console.Relay,
    reimports_main: bool = False,
) -> _failures.WorkerFailedError:
    stderr_files = relay.stderr_files(agent.attempt, run_dir)
    failures = {**agent.own_failures, **result.failures}
    return _report.failed_error(
        name,
        failures,
        run_dir,
        agent.attempt,
        stderr_files,
        agent.exits,
        agent.watch,
        agent.restarts_used,
        reimports_main,
    )
