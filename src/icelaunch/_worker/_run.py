"""The run of one launched function inside its worker: bootstrap, group, report, value.

``run`` is torch's entrypoint for function launches: it takes the job, ties the
process to the launcher, bootstraps it, joins the process group, calls the
function and hands its value to torch's return queue, or writes a failure
report (``_rundir.report_path``) for the launcher to read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import util
from typing import Any

from icelaunch import _diagnosis, _placement, _rundir, _transfer
from icelaunch._rundir import Identity
from icelaunch._spec import LaunchSpec
from icelaunch._worker import _user_group
from icelaunch._worker._bootstrap import bootstrap_common, die_with_parent
from icelaunch._worker._context import (
    WorkerContext,
    destroy_process_group,
    join_process_group,
    set_current,
)


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


def run(payload: bytes | Job, mark: object = None, visible: tuple[str | None, ...] = ()) -> Any:
    """Worker entrypoint: set up the context and process group, run the user function.

    ``payload`` is the pickled job, or under ``fork`` the job itself, inherited;
    ``mark`` told the fork server's new process that it is ours
    (``_console.WorkerMark``); ``visible``: each local rank's ``CUDA_VISIBLE_DEVICES``
    (``_placement``), set before the job is unpickled: unpickling imports the
    user's modules, which may ask CUDA for its devices.
    """
    who = Identity.from_env(os.environ)  # torch's variables for this rank; read once
    if who is None:
        raise RuntimeError("icelaunch's worker entrypoint runs only in a worker torch started")
    early = visible[who.local_rank] if visible else None
    _placement.narrow(early)
    job: Job = (
        payload if isinstance(payload, Job) else _transfer.receive(payload)
    )  # fork: inherited
    _notify(
        job.notify_path, who.notice("up")
    )  # this process opened torch's queues: names not needed
    _tie_to_parent(job)
    _take_parent_environment(job.env)
    if early is not None:
        os.environ[_placement.CUDA_VISIBLE] = early  # what CUDA, if started, already saw
    _placement.place(job.spec, who.local_rank, caller=job.env)  # GPUs, CPUs, threads
    bootstrap_common(who, job.report_dir)
    ctx = WorkerContext.from_env(job.spec, os.environ, who)
    set_current(ctx)
    _prepare_process(job.spec)
    result = _run_in_group(job, ctx)
    _flush_streams()  # the launcher shows everything written before the value arrives
    _notify(job.notify_path, who.notice())
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
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _rundir.stop_signals())  # held by a forking launcher
    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()  # what this worker starts can be found and stopped (_engine/_stop.py)
    if job.forked_by_server:
        die_with_parent(os.getppid())  # the fork server's child
        _watch_launcher(job.parent_pid)  # our parent is the fork server, not the launcher
    else:
        die_with_parent(job.parent_pid)


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


def _run_in_group(job: Job, ctx: WorkerContext) -> Any:
    """``job.fn(*job.args)`` inside an initialised process group.

    A failure is reported and the process ends at once (tearing the group down
    can block on a failed peer). After a return the group is destroyed as the
    process ends (a multiprocessing finalizer, after the launcher took every
    rank's value), so that teardown costs the launch call nothing.
    """
    util.Finalize(None, destroy_process_group, exitpriority=0)
    with _reported(job, ctx):
        if job.spec.process_group:
            join_process_group(ctx)
        else:
            _user_group.prefix_env_rendezvous(ctx.restart_count)
        _mark_started(job, ctx)
        result = job.fn(*job.args)
        with _placement.in_launcher_numbering(job.spec, ctx.local_rank):
            return _sendable(job.fn, ctx, result)
    return None  # the function called sys.exit(0)


def _mark_started(job: Job, ctx: WorkerContext) -> None:
    with open(_rundir.started_path(job.report_dir, ctx.restart_count, ctx.local_rank), "w"):
        pass


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
    path = _rundir.report_path(job.report_dir, ctx.restart_count, ctx.local_rank)
    try:
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(report, fh)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # the parent falls back to torch's error file and exit code


def _notify(path: str, notice: bytes) -> None:
    """One datagram to the agent (``Identity.notice``); if it is lost, the agent
    still sees the result at its next poll."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(notice, path)
    except OSError:
        pass
