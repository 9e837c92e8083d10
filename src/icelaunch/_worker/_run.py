"""Code that runs inside each worker: context, bootstrap, failure report, done signal."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import datetime
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import util
from typing import TYPE_CHECKING, Any

from icelaunch import _diagnosis, _transfer, _user_group
from icelaunch._bootstrap import bootstrap_common
from icelaunch._errors import NotInWorkerError
from icelaunch._spec import LaunchSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows about itself; rebuilt from its environment and the spec.

    Pure data (the device is kept as its name, so the object pickles and builds
    without torch); ``assigned_device`` gives it as a ``torch.device``, as
    ``launcher.assigned_device`` does.
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    group_rank: int
    group_world_size: int
    role_rank: int
    role_name: str
    role_world_size: int
    master_addr: str
    master_port: int
    restart_count: int
    max_restarts: int
    rdzv_id: str
    device_name: str
    dist_backend: str
    collective_timeout: float | None = None

    @property
    def assigned_device(self) -> torch.device:
        """This worker's device, e.g. ``torch.device('cuda:1')`` (``device_name`` as a string)."""
        import torch

        return torch.device(self.device_name)

    @classmethod
    def from_env(cls, spec: LaunchSpec, env: Mapping[str, str]) -> WorkerContext:
        """Read the variables torch's elastic agent gives every worker."""
        local_rank = int(env["LOCAL_RANK"])
        return cls(
            rank=int(env["RANK"]),
            local_rank=local_rank,
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
            group_rank=int(env["GROUP_RANK"]),
            group_world_size=int(env["GROUP_WORLD_SIZE"]),
            role_rank=int(env["ROLE_RANK"]),
            role_name=env["ROLE_NAME"],
            role_world_size=int(env["ROLE_WORLD_SIZE"]),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env["MASTER_PORT"]),
            restart_count=int(env["TORCHELASTIC_RESTART_COUNT"]),
            max_restarts=int(env["TORCHELASTIC_MAX_RESTARTS"]),
            rdzv_id=env["TORCHELASTIC_RUN_ID"],
            device_name=spec.devices[local_rank],
            dist_backend=spec.dist_backend,
            collective_timeout=spec.collective_timeout,
        )


_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
SPEC_ENV = "ICELAUNCH_SPEC"  # set for launched scripts by _engine.launch_command
_current: WorkerContext | None = None


def current() -> WorkerContext:
    """The context of the worker this code runs in (a launched function or script).

    Raises:
        NotInWorkerError: called outside a worker process.
    """
    global _current
    if _current is None and SPEC_ENV in os.environ and "LOCAL_RANK" in os.environ:
        from icelaunch._spec import spec_from_json

        _current = WorkerContext.from_env(spec_from_json(os.environ[SPEC_ENV]), os.environ)
    if _current is None:
        raise NotInWorkerError(
            "this property exists only inside a worker process started by icelaunch: "
            "read it in the function you launch, e.g. `def worker(launcher): launcher.rank`, "
            "or in a script run by the `icelaunch` command, e.g. `icelaunch.current().rank`"
        )
    return _current


def init_process_group() -> WorkerContext:
    """Join the job's default process group as a launched function does; return the context.

    For scripts run by the ``icelaunch`` command: selects this worker's CUDA
    device (if it has one) and initialises ``torch.distributed`` with the job's
    backend, rank, world size and store. The group is destroyed when the
    process exits. Does nothing if a default group exists already (a launched
    function has one).

    Raises:
        NotInWorkerError: called outside a worker process.
    """
    import torch.distributed as dist

    ctx = current()
    if not dist.is_initialized():
        _init_process_group(ctx)
        atexit.register(_destroy_process_group)
    return ctx


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Job:
    """What the parent sends every worker: the user call and where to report."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    spec: LaunchSpec
    report_dir: str
    notify_path: str
    forked_by_server: bool = False
    parent_pid: int = dataclasses.field(default_factory=os.getpid)
    env: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))


def report_path(report_dir: str, restart_count: int, local_rank: int) -> str:
    """Where a worker writes its failure report for one attempt."""
    return os.path.join(report_dir, f"failure-{restart_count}-{local_rank}.pkl")


def run(payload: bytes | Job, mark: object = None) -> Any:
    """Worker entrypoint: set up the context and process group, run the user function.

    ``payload`` is the pickled job, or under ``fork`` the job itself, inherited;
    ``mark`` told the fork server's new process that it is ours
    (``_console.WorkerMark``).
    """
    global _current
    job: Job = (
        payload if isinstance(payload, Job) else _transfer.receive(payload)
    )  # fork: inherited
    _notify(job.notify_path, "up")  # this process opened torch's queues: names not needed
    _tie_to_parent(job)
    _take_parent_environment(job.env)
    os.environ[_diagnosis.RUN_DIR_ENV] = job.report_dir  # for bootstrap_common
    bootstrap_common()
    ctx = WorkerContext.from_env(job.spec, os.environ)
    _current = ctx
    _prepare_process(job.spec)
    result = _run_in_group(job, ctx)
    _flush_streams()  # the launcher shows everything written before the value arrives
    _notify_done(job.notify_path, ctx)
    return result  # torch queues it; the process group is destroyed as the process ends


@contextlib.contextmanager
def _reported(job: Job, ctx: WorkerContext) -> Iterator[None]:
    """Write a failure report for an exception escaping the block, then let it go on.

    ``sys.exit(0)`` ends the rank successfully (its result is None), as under torchrun.
    """
    try:
        yield
    except SystemExit as exc:
        if exc.code in (0, None):
            return
        _write_report(job, ctx, exc)
        _exit_now(exc.code if isinstance(exc.code, int) else 1)
    except BaseException as exc:
        _diagnosis.without_bootstrap_frames(exc)
        _write_report(job, ctx, exc)
        traceback.print_exception(exc)
        _exit_now(1)


def _exit_now(code: int) -> None:
    """End a failed worker at once: the report is written, and tearing down the
    process group can block on peers stuck in a collective."""
    _flush_streams()
    os._exit(code)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _tie_to_parent(job: Job) -> None:
    """Die with the launching process, whatever signals the user code ignores.

    Forked workers also inherit the launcher's Python signal handlers, which
    would turn SIGTERM into an exception that a rank blocked in C++ never sees.
    Each worker leads a session of its own, as torch's command workers do.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held by a forking launcher
    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()  # what this worker starts can be found and stopped (engine/_stop.py)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if job.forked_by_server:
        _watch_launcher(job.parent_pid)  # our parent is the fork server, not the launcher
    elif os.getppid() != job.parent_pid:
        os._exit(1)  # the launcher died before the line above took effect


def _watch_launcher(pid: int) -> None:
    """End this worker as soon as process ``pid`` (the launcher) ends."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)

    def watch() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="icelaunch-launcher-watch", daemon=True).start()


_AGENT_VARIABLES = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "GROUP_RANK",
        "ROLE_RANK",
        "ROLE_NAME",
        "LOCAL_WORLD_SIZE",
        "WORLD_SIZE",
        "GROUP_WORLD_SIZE",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    }
)


def _take_parent_environment(parent: dict[str, str]) -> None:
    """The launcher's environment at launch time, plus what torch's agent set for this rank.

    A fork-server worker otherwise sees the environment the server started with.
    """
    own = {
        k: v
        for k, v in os.environ.items()
        if k in _AGENT_VARIABLES or k.startswith("TORCHELASTIC_")
    }
    os.environ.clear()
    os.environ.update(parent)
    os.environ.update(own)


def _prepare_process(spec: LaunchSpec) -> None:
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)
    if "OMP_NUM_THREADS" not in os.environ:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(spec.omp_num_threads)
        torch.set_num_threads(spec.omp_num_threads)


def _run_in_group(job: Job, ctx: WorkerContext) -> Any:
    """``job.fn(*job.args)`` inside an initialised process group.

    A failure is reported and the process ends at once (tearing the group down
    can block on a failed peer). After a return the group is destroyed as the
    process ends (a multiprocessing finalizer, after the launcher took every
    rank's value), so that teardown costs the launch call nothing.
    """
    util.Finalize(None, _destroy_process_group, exitpriority=0)
    with _reported(job, ctx):
        if job.spec.process_group:
            _init_process_group(ctx)
        else:
            _user_group.prefix_env_rendezvous(ctx.restart_count)
        _mark_started(job, ctx)
        result = job.fn(*job.args)
        return _sendable(job.fn, ctx, result)
    return None  # the function called sys.exit(0)


def started_path(report_dir: str, restart_count: int, local_rank: int) -> str:
    """The file whose existence says a worker's group was up and its function began."""
    return os.path.join(report_dir, f"started-{restart_count}-{local_rank}")


def _mark_started(job: Job, ctx: WorkerContext) -> None:
    with open(started_path(job.report_dir, ctx.restart_count, ctx.local_rank), "w"):
        pass


def _init_process_group(ctx: WorkerContext) -> None:
    """Select the worker's device and join the job's default process group."""
    import torch
    import torch.distributed as dist

    device = ctx.assigned_device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    options: dict[str, Any] = {"device_id": device} if ctx.dist_backend == "nccl" else {}
    if ctx.collective_timeout is not None:
        options["timeout"] = datetime.timedelta(seconds=ctx.collective_timeout)
    dist.init_process_group(
        backend=ctx.dist_backend,
        store=_attempt_store(ctx),
        rank=ctx.rank,
        world_size=ctx.world_size,
        **options,
    )


def _attempt_store(ctx: WorkerContext) -> Any:
    """The job's store, under a prefix of its own for each restart.

    torch's ``env://`` shares keys across restarts of a static rendezvous, so a
    restarted group would read the previous attempt's (dead) peer addresses.
    """
    from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if not agent_hosts and ctx.group_world_size == 1:  # one node: listen on loopback only
        from icelaunch._loopback import worker_store

        store = worker_store(ctx.rank, ctx.master_port, ctx.world_size)
    else:
        store = TCPStore(
            ctx.master_addr,
            ctx.master_port,
            world_size=ctx.world_size,
            is_master=not agent_hosts and ctx.rank == 0,
            wait_for_workers=False,
        )
    # A store hosted by worker rank 0 is new for each rendezvous round (c10d, etcd-v2)
    # and nodes may count restarts differently (a newcomer has 0): no attempt prefix.
    attempt = f"/attempt_{ctx.restart_count}" if agent_hosts else ""
    return PrefixStore(f"icelaunch/{ctx.rdzv_id}{attempt}", store)


def _sendable(fn: Callable[..., Any], ctx: WorkerContext, value: Any) -> Any:
    """``value`` ready for torch's return queue: classes of ``__main__`` or a notebook
    by value, large tensors, arrays and bytes through shared memory (``_transfer``)."""
    try:
        return _transfer.as_result(value)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"the return value of {name} on rank {ctx.rank} cannot be pickled back to the "
            f"launcher ({type(exc).__name__}: {exc}); return plain data such as tensors, "
            f"numbers, lists or dicts"
        ) from exc


def _write_report(job: Job, ctx: WorkerContext, exc: BaseException) -> None:
    """Save type, message, traceback and (if picklable) the exception for the parent."""
    pickled: bytes | None
    try:
        import cloudpickle  # an exception class from __main__ or a notebook goes by value

        pickled = cloudpickle.dumps(exc)
        pickle.loads(pickled)  # the parent must be able to load it too
    except Exception:
        pickled = None
    report = {
        "rank": ctx.rank,
        "local_rank": ctx.local_rank,
        "exc_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "exception": pickled,
        "time": time.time(),
    }
    path = report_path(job.report_dir, ctx.restart_count, ctx.local_rank)
    try:
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(report, fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # the parent falls back to torch's error file and exit code


def _notify_done(path: str, ctx: WorkerContext) -> None:
    """Tell the agent this rank returned, so it need not wait for its next poll."""
    _notify(path)


def _notify(path: str, what: str = "") -> None:
    """One datagram to the agent: ``<attempt> <local rank> [what]`` (none: returned)."""
    env = os.environ
    message = f"{env.get('TORCHELASTIC_RESTART_COUNT', '0')} {env.get('LOCAL_RANK', '0')} {what}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.strip().encode(), path)
    except OSError:
        pass  # the agent still sees the result at its next poll
