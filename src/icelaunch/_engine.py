"""The only module that talks to torch.distributed.elastic.

It assembles torch's public pieces (``RendezvousParameters``, the rendezvous
registry, ``WorkerSpec``, ``LocalElasticAgent``, ``DefaultLogsSpecs``) the way
``torch.distributed.launcher.api.launch_agent`` does, with three changes:
the agent wakes up as soon as a worker returns or dies instead of sleeping
``monitor_interval`` seconds, a worker that exits without returning counts as
failed instead of hanging the launch, and the caller's signal handlers and
environment are restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
from torch.distributed.elastic.agent.server.api import (
    RunResult,
    WorkerGroup,
    WorkerSpec,
    WorkerState,
)
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters

from icelaunch import _failures, _ports, _worker
from icelaunch._spec import LaunchSpec

logger = logging.getLogger(__name__)

LINE_PREFIX = "[rank${rank}]: "
SHUTDOWN_TIMEOUT_S = 3
DEFAULT_RDZV_TIMEOUT_S = 900
_HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
_RESULT_SPIN_S = 0.002


class _DoneListener:
    """Receives "rank returned" datagrams from workers and waits for events."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.setblocking(False)
        self.done: set[int] = set()
        self.attempt = -1

    def new_attempt(self) -> None:
        self._drain()
        self.attempt += 1
        self.done.clear()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            attempt, local_rank = (int(x) for x in data.split())
            if attempt == self.attempt:
                self.done.add(local_rank)

    def wait(self, pids: dict[int, int], timeout: float) -> None:
        """Return when a worker reports, a worker process exits, or ``timeout`` passes."""
        self._drain()
        if len(self.done) == len(pids):
            time.sleep(_RESULT_SPIN_S)  # the return value is being queued right now
            return
        with _pidfds(pids.values()) as fds:
            if any(fd < 0 for fd in fds):
                return
            select.select([self._sock.fileno(), *fds], [], [], timeout)
        self._drain()

    def close(self) -> None:
        self._sock.close()


@contextlib.contextmanager
def _pidfds(pids: Any) -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                fds.append(-1)
        yield fds
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _exit_status(pid: int) -> int | None:
    """Exit status of worker ``pid`` if it has exited, else None; the process is not reaped.

    A worker already reaped by torch without a failure report exited with status 0.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class _Agent(LocalElasticAgent):
    """LocalElasticAgent that waits on worker events instead of fixed sleeps."""

    def __init__(self, *, listener: _DoneListener, poll_interval: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._listener = listener
        self._poll_interval = poll_interval

    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        self._listener.new_attempt()
        started: dict[int, Any] = super()._start_workers(worker_group)
        return started

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        pids = {w.local_rank: w.id for w in worker_group.workers if w.id is not None}
        self._listener.wait(pids, self._poll_interval)
        silent = self._silent_exits(worker_group)  # before torch reaps the processes
        result: RunResult = super()._monitor_workers(worker_group)
        if not silent or result.state not in (WorkerState.HEALTHY, WorkerState.FAILED):
            return result
        silent.update(result.failures)  # torch's own record wins for a rank
        return RunResult(state=WorkerState.FAILED, failures=silent)

    def _silent_exits(self, worker_group: WorkerGroup) -> dict[int, ProcessFailure]:
        """Workers that exited without returning a result (e.g. ``os._exit(0)``)."""
        failures: dict[int, ProcessFailure] = {}
        for w in worker_group.workers:
            if w.id is None or w.local_rank in self._listener.done:
                continue
            status = _exit_status(w.id)
            if status is None:
                continue
            failure = ProcessFailure(
                local_rank=w.local_rank, pid=w.id, exitcode=status, error_file=""
            )
            failure.message = (
                f"the worker process exited with status {status} before its function "
                f"returned (os._exit() or a crash in native code)"
            )
            failures[w.global_rank] = failure
        return failures

    @property
    def attempt(self) -> int:
        """The attempt that ran last (0 for the first, 1 after one restart, ...)."""
        return self._listener.attempt


def _std_maps(spec: LaunchSpec) -> tuple[dict[int, Std], dict[int, Std]]:
    """Per local rank: what goes to files only, and what is teed with a rank prefix.

    Everything the user did not redirect is teed, so console lines carry the rank.
    """
    n = spec.nproc_per_node
    redirects = _expand(Std.from_str(spec.redirects), n)
    tee = _expand(Std.from_str(spec.tee), n)
    teed = {r: Std(int(tee[r]) | (int(Std.ALL) & ~int(redirects[r]))) for r in range(n)}
    only_file = {r: Std(int(redirects[r]) & ~int(teed[r])) for r in range(n)}
    return only_file, teed


def _expand(value: Std | dict[int, Std], n: int) -> dict[int, Std]:
    if isinstance(value, dict):
        return {r: value.get(r, Std.NONE) for r in range(n)}
    return dict.fromkeys(range(n), value)


def _rendezvous(spec: LaunchSpec, port: int) -> tuple[RendezvousParameters, str | None, int | None]:
    """Rendezvous parameters, plus master address and port for the static backend."""
    configs: dict[str, Any] = dict(spec.rdzv_configs)
    configs.setdefault("timeout", DEFAULT_RDZV_TIMEOUT_S)
    backend, endpoint, run_id = spec.rdzv_backend, spec.rdzv_endpoint, spec.rdzv_id
    master: tuple[str | None, int | None] = (None, None)
    if spec.standalone:
        backend, endpoint, run_id = "c10d", f"127.0.0.1:{port}", str(uuid.uuid4())
        configs["is_host"] = True  # fail on a taken port instead of joining a stranger
    elif backend == "static":
        endpoint = endpoint or f"{spec.master_addr}:{port}"
        host, _, static_port = endpoint.rpartition(":")
        master = (host.strip("[]"), int(static_port))
        configs["rank"] = spec.node_rank
    params = RendezvousParameters(
        backend=backend,
        endpoint=endpoint,
        run_id=run_id,
        min_nodes=spec.min_nodes,
        max_nodes=spec.max_nodes,
        **configs,
    )
    return params, master[0], master[1]


@contextlib.contextmanager
def _restored_process_state() -> Iterator[None]:
    """Put back the caller's signal handlers and environment, whatever happens."""
    saved_env = dict(os.environ)
    handlers = {}
    for name in _HANDLED_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            handlers[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread
                signal.signal(sig, handler)
        if os.environ != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)


@contextlib.contextmanager
def _no_torch_temp_files() -> Iterator[None]:
    """Remove the error files torch.multiprocessing leaves in the temp folder on failure."""
    folder = tempfile.gettempdir()
    before = set(os.listdir(folder))
    try:
        yield
    finally:
        for name in set(os.listdir(folder)) - before:
            if name.startswith("pytorch-errorfile-") and name.endswith(".pickle"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


class _DropTraceback(logging.Filter):
    """Keep torch's failure log line, drop its traceback.

    WorkerFailedError carries every traceback; formatting one in torch's logging
    imports torch._dynamo (about 0.7 s) and creates inductor cache folders.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


_TORCH_FAILURE_LOGGERS = (
    "torch.distributed.elastic.multiprocessing.api",
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.agent.server.local_elastic_agent",
)


@contextlib.contextmanager
def _torch_logs_without_tracebacks() -> Iterator[None]:
    drop = _DropTraceback()
    loggers = [logging.getLogger(name) for name in _TORCH_FAILURE_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def launch(spec: LaunchSpec, fn: Callable[..., Any], args: tuple[Any, ...]) -> dict[int, Any]:
    """Run ``fn(*args)`` in every worker of this node; return values by global rank.

    Raises:
        WorkerFailedError: workers failed and no restart was left.
        KeyboardInterrupt: the launching process got SIGINT.
    """
    job_dir = tempfile.mkdtemp(prefix="icelaunch_")
    try:
        with _restored_process_state(), _no_torch_temp_files(), _torch_logs_without_tracebacks():
            return _launch_with_port_retry(spec, fn, args, job_dir)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _launch_with_port_retry(
    spec: LaunchSpec, fn: Callable[..., Any], args: tuple[Any, ...], job_dir: str
) -> dict[int, Any]:
    chosen = spec.master_port is None or spec.standalone
    for attempt in range(_ports.ATTEMPTS):
        port = _ports.free_port() if chosen or spec.master_port is None else spec.master_port
        try:
            return _run(spec, fn, args, job_dir, port, attempt)
        except _ports.PortBusyError:
            if not chosen:
                raise
            logger.debug("port %s was taken meanwhile; trying another", port)
    raise _ports.PortBusyError(f"no free port found after {_ports.ATTEMPTS} attempts")


def _run(
    spec: LaunchSpec,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    job_dir: str,
    port: int,
    attempt: int,
) -> dict[int, Any]:
    run_dir = os.path.join(job_dir, str(attempt))
    os.makedirs(run_dir)
    job = _worker.Job(fn, args, spec, run_dir, os.path.join(run_dir, "done.sock"))
    payload = cloudpickle.dumps(job)
    listener = _DoneListener(job.notify_path)
    try:
        rdzv_params, master_addr, master_port = _rendezvous(spec, port)
        rdzv_handler = _ports.create_handler(rdzv_params, port)
        worker_spec = WorkerSpec(
            role=spec.role,
            local_world_size=spec.nproc_per_node,
            entrypoint=_worker.run,
            args=(payload,),
            rdzv_handler=rdzv_handler,
            max_restarts=spec.max_restarts,
            monitor_interval=1e-6,
            master_addr=master_addr,
            master_port=master_port,
        )
        return _run_agent(spec, fn, worker_spec, listener, run_dir)
    except _failures.WorkerFailedError:
        raise
    except Exception as exc:
        busy = _ports.as_port_busy(exc, port)
        if busy is exc:
            raise
        raise busy from exc
    finally:
        listener.close()


def _run_agent(
    spec: LaunchSpec,
    fn: Callable[..., Any],
    worker_spec: WorkerSpec,
    listener: _DoneListener,
    run_dir: str,
) -> dict[int, Any]:
    only_file, teed = _std_maps(spec)
    logs = DefaultLogsSpecs(
        log_dir=spec.log_dir or os.path.join(run_dir, "logs"), redirects=only_file, tee=teed
    )
    agent = _Agent(
        listener=listener,
        poll_interval=spec.monitor_interval,
        spec=worker_spec,
        logs_specs=logs,
        start_method=spec.start_method,
        log_line_prefix_template=LINE_PREFIX,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    shutdown_rdzv = True
    try:
        result = agent.run()
        if result.is_failed():
            raise _failed(fn, result, run_dir, agent, logs)
        return dict(sorted(result.return_values.items()))
    except SignalException as exc:
        shutdown_rdzv = False  # keep the rendezvous open for the other nodes
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    finally:
        if shutdown_rdzv:
            worker_spec.rdzv_handler.shutdown()


def _failed(
    fn: Callable[..., Any], result: RunResult, run_dir: str, agent: _Agent, logs: DefaultLogsSpecs
) -> ChildFailedError:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    stderr_files = _stderr_files(logs, agent)
    return _failures.build_error(name, result.failures, run_dir, agent.attempt, stderr_files)


def _stderr_files(logs: DefaultLogsSpecs, agent: _Agent) -> dict[int, str]:
    root = logs.root_log_dir
    found: dict[int, str] = {}
    for dirpath, _, files in os.walk(root):
        if "stderr.log" in files and f"attempt_{agent.attempt}" in dirpath:
            with contextlib.suppress(ValueError):
                found[int(os.path.basename(dirpath))] = os.path.join(dirpath, "stderr.log")
    return found
