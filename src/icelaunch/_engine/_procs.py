"""The worker processes behind torch's process context, with their true exit statuses.

torch keeps ``multiprocessing.Process`` objects for launched functions
(``MultiprocessContext._pc.processes``) and ``subprocess.Popen`` objects for
commands (``SubprocessContext.subprocess_handlers[r].proc``), and the return-value queues
and the "values taken" event of ``MultiprocessContext``. Those objects are
the only reliable source of an exit status: a worker forked by the fork server
is not our child, and only its ``Process`` object hears the status the fork
server sends through the sentinel pipe. These private attributes are read here
and nowhere else; ``tests/test_stop.py`` fails loudly if torch renames them.
So is torch's signal handler, which :func:`signals_deferred` holds back while
workers start.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import torch.distributed.elastic.multiprocessing.api as torch_mp_api


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
    if pcontext is None:
        return []
    pc = getattr(pcontext, "_pc", None)  # MultiprocessContext
    if pc is not None:
        return [WorkerProcess(r, int(p.pid), p) for r, p in enumerate(pc.processes)]
    handlers = getattr(pcontext, "subprocess_handlers", None) or {}  # SubprocessContext
    return [WorkerProcess(r, int(h.proc.pid), h.proc) for r, h in sorted(handlers.items())]


def return_queues(pcontext: Any) -> dict[int, Any]:
    """Local rank -> the queue on which torch's ``_wrap`` puts that worker's return
    value (``MultiprocessContext._ret_vals``); empty for commands."""
    return dict(getattr(pcontext, "_ret_vals", None) or {})


def queue_fd(queue: Any) -> int:
    """The file descriptor that becomes readable when ``queue`` (a multiprocessing
    ``SimpleQueue``) has a value."""
    return int(queue._reader.fileno())


def release_workers(pcontext: Any) -> None:
    """Let the workers of ``pcontext`` end: torch's ``_wrap`` waits on this event after
    queuing its value. Set only once every value was taken, as torch does."""
    pcontext._worker_finished_event.set()


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
    walk(getattr(pcontext, "_worker_finished_event", None), 3)
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


def error_file(pcontext: Any, local_rank: int) -> str:
    """The torch error file of ``local_rank`` (``""`` if torch gave none)."""
    files = getattr(pcontext, "error_files", None) or {}
    return str(files.get(local_rank, ""))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back torch's stop-signal exception until the block (starting workers) ends.

    torch installs its handler, which raises ``SignalException``, just before it
    starts the workers; raised half-way, the workers already started would be
    known to nobody. Inside the block a signal is only noted; torch's own handler
    is back in place, and raises for a noted signal, when the block ends.
    """
    original = torch_mp_api._terminate_process_handler
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    torch_mp_api._terminate_process_handler = note  # type: ignore[assignment]
    try:
        yield
    finally:
        torch_mp_api._terminate_process_handler = original
        for sig in signal.valid_signals():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(sig) is note:
                    signal.signal(sig, original)
    if noted:
        original(noted[0], None)
