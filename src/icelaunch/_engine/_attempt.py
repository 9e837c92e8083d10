"""One attempt of a launch: torch's agent (ours), the console relay, the rendezvous.

``run_attempt`` builds torch's ``WorkerSpec`` and rendezvous handler for one port,
runs :class:`~icelaunch._engine._agent.Agent` with the relay and the diagnosis
watch, and returns the values or raises the error ``_report`` builds. After a
success what closes the attempt moves to the caller's ``later`` stack.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerSpec
from torch.distributed.elastic.multiprocessing.api import SignalException

from icelaunch import _console, _diagnosis, _rundir, _watching
from icelaunch._engine import (
    _forkserver,
    _logs,
    _rendezvous,
    _report,
    _setup,
    _signals,
    _stores,
    _teardown,
    _waiting,
)
from icelaunch._engine._agent import Agent, DoneListener
from icelaunch._engine._failures import WorkerFailedError
from icelaunch._spec import LaunchSpec

if TYPE_CHECKING:
    from icelaunch._engine._launch import Target

logger = logging.getLogger(__name__)


def run_attempt(
    spec: LaunchSpec,
    target: Target,
    run_dir: str,
    port: int,
    later: contextlib.ExitStack,
    signals: _signals.LaunchSignals,
    monitor: _watching.Monitor | None = None,
) -> dict[int, Any]:
    """One attempt at ``port``; on success what is left to close moves to ``later``.

    It starts with the launch's ``signals`` held: a stop is raised at a safe point.
    """
    signals.hold()
    attempt = contextlib.ExitStack()
    with attempt:
        listener = DoneListener(_rundir.done_address(run_dir))
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
            values = _run_agent(
                spec, target, worker_spec, listener, run_dir, attempt, signals, monitor
            )
        later.enter_context(attempt.pop_all())
        return values


def _run_agent(
    spec: LaunchSpec,
    target: Target,
    worker_spec: WorkerSpec,
    listener: DoneListener,
    run_dir: str,
    attempt: contextlib.ExitStack,
    signals: _signals.LaunchSignals,
    monitor: _watching.Monitor | None = None,
) -> dict[int, Any]:
    """Run torch's agent (with our :class:`Agent`); return the values by global rank.

    After a success the workers may still be ending: ``attempt`` gets what closes
    the run (the agent's :meth:`Agent.finish`, the relay, the rendezvous).
    """
    logs = _logs.RelayedLogs(spec.log_dir or os.path.join(run_dir, _rundir.LOGS_DIR))
    closed = functools.partial(signals.request, signal.SIGPIPE)  # `icelaunch ... | head`
    relay = _console.Relay(target.console, _logs.routes(spec, logs), on_closed=closed)
    watch = _report.watch_for(spec)
    agent = Agent(
        listener=listener,
        poll_interval=spec.monitor_interval,
        reports_done=target.reports_done,
        spec=worker_spec,
        logs_specs=logs,
        start_method=_forkserver.torch_start_method(spec),
        describe=functools.partial(_report.describe, run_dir),
        mark=target.mark,
        watch=watch,
        run_dir=run_dir,
        signals=signals,
        shutdown_timeout=spec.shutdown_timeout,
        monitor=monitor,
        log_line_prefix_template=_rundir.PREFIX_TEMPLATE,
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
        if monitor is not None:
            monitor.prepare(run_dir)
            monitor.event("rendezvous_started", f"rendezvous ({spec.rdzv_backend}) began")
        try:
            result = agent.run()
        finally:
            if not agent.finishing:
                relay.close()  # before a failure is reported: its output comes first
        if result.is_failed():
            raise _failed(target.name, result, run_dir, agent, relay, _reimports_main(spec, target))
        relay.sync()  # what the workers wrote before they returned is shown before the value
        return dict(sorted(result.return_values.items()))
    except _diagnosis.Stopped as stop:
        raise _report.stopped_error(target.name, stop, watch, agent.get_worker_group()) from None
    except SignalException as exc:
        shutdown_rdzv = False  # keep the rendezvous open for the other nodes
        _report.print_interrupted(watch, exc.sigval, agent.stop_outcome)
        stopped = _report.stopped_by_signal(exc.sigval, agent.stop_outcome)
        logger.warning("%s", stopped)  # said once, also where it ends the program uncaught
        raise stopped from None


def _reimports_main(spec: LaunchSpec, target: Target) -> bool:
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
) -> WorkerFailedError:
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
