"""How worker processes start: plain multiprocessing, or the warm fork server.

Imports no torch, so :func:`warm_up` can run before the program imports it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing import process, resource_tracker, util

from icelaunch._spec import LaunchSpec

#: what the fork server imports once; ``icelaunch._launcher`` because jobs often carry
#: the launcher object (named, not imported: the engine imports nothing above it)
PRELOAD = ["icelaunch._engine._preload", "icelaunch._launcher"]


def uses_fork_server(spec: LaunchSpec) -> bool:
    """Whether workers of ``spec`` are forked by multiprocessing's fork server."""
    return spec.start_method == "forkserver" or (spec.start_method == "spawn" and spec.warm_start)


def torch_start_method(spec: LaunchSpec) -> str:
    """The start method handed to torch: ``spawn`` becomes the warm fork server."""
    return "forkserver" if uses_fork_server(spec) else spec.start_method


def warm_up(spec: LaunchSpec | None = None) -> None:
    """Start the fork server now; it imports torch while the launcher carries on.

    The server is one per process, kept between launches, and ends with the
    process; it runs none of the caller's code and never initialises CUDA.
    """
    if spec is not None and not uses_fork_server(spec):
        return
    if spec is None or spec.warm_start:
        multiprocessing.set_forkserver_preload(PRELOAD)
    _short_socket_folder()
    resource_tracker.ensure_running()  # first: it unblocks SIGINT when it starts
    with _sigint_blocked():  # inherited by the server while it imports torch
        multiprocessing.forkserver.ensure_running()


def wait_ready(timeout: float = 300.0, check: Callable[[], None] | None = None) -> None:
    """Return once the fork server has imported its preload modules (or after ``timeout``).

    Workers can only be forked after that; waiting here, in short steps that call
    ``check`` (which raises a stop the launch noted), keeps the start of the workers
    themselves short. The server ignores SIGINT from the moment its preload is done:
    that is the sign read in /proc.
    """
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        if check is not None:
            check()
        try:
            with open(f"/proc/{pid}/status") as fh:
                ignored = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn"))
        except (OSError, StopIteration, ValueError):
            return
        if ignored & (1 << (signal.SIGINT - 1)):
            return
        time.sleep(0.02)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while the fork server starts: the server inherits
    the mask, so a Ctrl-C to the terminal's process group during its imports prints
    no traceback from it. Here a SIGINT is only delayed, not lost.

    Workers unblock it at bootstrap (``_worker._run._tie_to_parent``).
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


_SUN_PATH_MAX = 107  # bytes of an AF_UNIX path, without the final NUL
_SHORT_FOLDERS = ("/tmp", "/dev/shm", "/var/tmp")


def _short_socket_folder() -> None:
    """Give multiprocessing a temp folder short enough for its fork server's socket.

    The fork server listens on ``<tempdir>/pymp-XXXXXXXX/listener-XXXXXXXX``; with a
    TMPDIR longer than about 72 characters that path is too long for AF_UNIX. Then
    this process's multiprocessing folder goes to a short system folder instead
    (removed at exit, like multiprocessing's own).
    """
    config = process.current_process()._config  # type: ignore[attr-defined]
    folder = config.get("tempdir") or os.path.join(tempfile.gettempdir(), "pymp-XXXXXXXX")
    if len(os.fsencode(os.path.join(folder, "listener-XXXXXXXX"))) <= _SUN_PATH_MAX:
        return
    for base in _SHORT_FOLDERS:
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            short = tempfile.mkdtemp(prefix="pymp-", dir=base)
            util.Finalize(None, shutil.rmtree, args=(short, True), exitpriority=-100)
            config["tempdir"] = short
            return
