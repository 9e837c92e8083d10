"""The worker processes behind torch's process context, with their true exit statuses.

torch keeps ``multiprocessing.Process`` objects for launched functions and
``subprocess.Popen`` objects for commands, and the return-value queues and the
"values taken" event of its multiprocessing context. Those objects are the only
reliable source of an exit status: a worker forked by the fork server is not our
child, and only its ``Process`` object hears the status the fork server sends
through the sentinel pipe. torch's private attributes behind them are read
through ``_torch_internals``; multiprocessing's (a queue's reader, a semaphore's
name, its finalizers) here.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

from icelaunch import _torch_internals


class WorkerProcess:
    """One worker: its local rank, pid, and the object that knows how it ended.

    Its pidfd says the moment the process ends; the status may come a little
    later (the fork server reaps the worker, then writes the status).
    """

    def __init__(self, local_rank: int, pid: int, handle: BaseProcess | subprocess.Popen[Any]):
        self.local_rank = local_rank
        self.pid = pid
        self.handle = handle
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.pidfd = -1  # already gone

    def exitcode(self) -> int | None:
        """The true exit status without blocking (``-N`` for signal N), None until known."""
        if isinstance(self.handle, subprocess.Popen):
            return self.handle.poll()
        return self.handle.exitcode

    def status_fd(self) -> int:
        """A file descriptor that becomes readable once the status is known."""
        if isinstance(self.handle, BaseProcess):
            return self.handle.sentinel
        return self.pidfd

    def dead(self) -> bool:
        """Whether the process has ended (its status may not be known yet)."""
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def wait_status(self, timeout: float) -> int | None:
        """The exit status of a dead worker, waiting up to ``timeout`` for it to be known."""
        code = self.exitcode()
        if code is None:
            select.select([self.status_fd()], [], [], timeout)
            code = self.exitcode()
        return code

    def close(self) -> None:
        """Release the pidfd."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __repr__(self) -> str:
        return f"WorkerProcess(local_rank={self.local_rank}, pid={self.pid})"


def workers_of(pcontext: Any) -> list[WorkerProcess]:
    """The workers of torch's ``PContext`` (empty before it started any)."""
    return [WorkerProcess(r, pid, h) for r, pid, h in _torch_internals.worker_handles(pcontext)]


def return_queues(pcontext: Any) -> dict[int, Any]:
    """Local rank -> the queue on which torch puts that worker's return value."""
    return _torch_internals.return_queues(pcontext)


def queue_fd(queue: Any) -> int:
    """The file descriptor that becomes readable when ``queue`` (a multiprocessing
    ``SimpleQueue``) has a value."""
    return int(queue._reader.fileno())


def release_workers(pcontext: Any) -> None:
    """Let the workers of ``pcontext`` end: torch's ``_wrap`` waits on this event after
    queuing its value. Set only once every value was taken, as torch does."""
    _torch_internals.finished_event(pcontext).set()


def unlink_semaphores(pcontext: Any) -> int:
    """Remove the names of the semaphores behind torch's return queues and event.

    Under spawn and the fork server, multiprocessing names them in ``/dev/shm`` so
    that workers can open them; its resource tracker unlinks them at the end, but
    dies with the launcher when a whole process tree is killed (``kill -9`` of a
    node). Once every worker has opened them (it runs our code), the names are
    not needed: unlinked now, nothing is left whatever way the launch ends.
    Returns how many were unlinked.
    """
    from multiprocessing import resource_tracker, synchronize, util

    names: set[str] = set()

    def walk(obj: Any, depth: int) -> None:
        if isinstance(obj, synchronize.SemLock):
            name = getattr(obj._semlock, "name", None)  # type: ignore[attr-defined]
            if name:
                names.add(name)
        elif depth > 0:
            for value in list(getattr(obj, "__dict__", {}).values()):
                walk(value, depth - 1)

    for queue in return_queues(pcontext).values():
        walk(queue, 2)
    walk(_torch_internals.finished_event(pcontext), 3)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            synchronize.sem_unlink(name)  # type: ignore[attr-defined]
        resource_tracker.unregister(name, "semaphore")
    for finalizer in list(util._finalizer_registry.values()):  # type: ignore[attr-defined]
        callback = getattr(finalizer, "_callback", None)
        args = getattr(finalizer, "_args", None) or ()
        cleanup = synchronize.SemLock._cleanup  # type: ignore[attr-defined]
        if callback is cleanup and args and args[0] in names:
            finalizer.cancel()  # it would unlink the name again, and fail
    return len(names)


SHM_DIR = "/dev/shm"
#: what starts the name of a semaphore made while torch starts workers, before its
#: owner's tag ``<pid namespace>.<pid>.<start time>``: ``/dev/shm/sem.mp-icelaunch.…``
SEM_PREFIX = "/mp-icelaunch."
_naming = threading.Lock()
_naming_depth = 0
_saved_prefix = "/mp"


@contextlib.contextmanager
def semaphores_named_for_sweep() -> Iterator[None]:
    """Around torch's creation of its return queues and event: first remove the
    semaphore names that launchers killed outright left, then name the new ones
    after this process, so that they are removed in turn if it is killed.

    multiprocessing unlinks a semaphore's name at once only for ``fork``: under
    spawn and the fork server each worker opens it by name while it starts, and
    :func:`unlink_semaphores` removes the names once every worker runs. Until
    then (about 0.1 s) a ``kill -9`` of the whole process tree, resource tracker
    included, would leave them in ``/dev/shm`` for good; named here, they are
    removed by the next launch on the machine (same user, same PID namespace)
    once their launcher is gone.
    """
    global _naming_depth, _saved_prefix
    from multiprocessing import process

    sweep_orphaned_semaphores()
    config = process.current_process()._config  # type: ignore[attr-defined]
    with _naming:  # launches from several threads: the first in sets, the last out restores
        if _naming_depth == 0:
            _saved_prefix = config.get("semprefix", "/mp")
            config["semprefix"] = SEM_PREFIX + _owner_tag(os.getpid())
        _naming_depth += 1
    try:
        yield
    finally:
        with _naming:
            _naming_depth -= 1
            if _naming_depth == 0:
                config["semprefix"] = _saved_prefix


def sweep_orphaned_semaphores() -> list[str]:
    """Unlink the semaphores named by :func:`semaphores_named_for_sweep` whose
    launcher is gone (pid ended, or reused by a process started at another time);
    only this PID namespace's, and only this user's. Returns the names removed."""
    mine = SEM_PREFIX[1:] + _pid_namespace() + "."
    removed: list[str] = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith("sem." + mine):
            continue
        pid_text, _, rest = entry[len("sem." + mine) :].partition(".")
        start = rest.partition("-")[0]
        if not pid_text.isdigit() or _owner_tag(int(pid_text)).endswith(f".{pid_text}.{start}"):
            continue  # its launcher still runs
        path = os.path.join(SHM_DIR, entry)
        with contextlib.suppress(OSError):
            if os.stat(path).st_uid == os.getuid():
                os.unlink(path)
                removed.append(entry)
    return removed


def _owner_tag(pid: int) -> str:
    """``<pid namespace>.<pid>.<start time in clock ticks>`` ("gone" for the time of a
    process that does not exist)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            start = fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        start = "gone"
    return f"{_pid_namespace()}.{pid}.{start}"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def error_file(pcontext: Any, local_rank: int) -> str:
    """The torch error file of ``local_rank`` (``""`` if torch gave none)."""
    return _torch_internals.error_file(pcontext, local_rank)
