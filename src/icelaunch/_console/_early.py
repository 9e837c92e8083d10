"""Output a worker writes before it attaches to the relay, held and then relayed.

A worker forked by the warm fork server runs multiprocessing's ``spawn._main``
first: it imports the launcher's main module again (a script's top-level
``print``, warnings) and unpickles the job, before our code can attach it to
the relay. In the fork server (``icelaunch._engine._preload``), :func:`wrap_spawn_main`
makes each new worker's fds 1 and 2 point at anonymous memory files first;
``attach`` then hands what they hold to the relayed streams (:func:`hand_over`),
where it gets the rank's prefix and goes to the log files. A worker that ends
before attaching gets its own streams back, with what it held
(:func:`give_back`), so nothing is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

_held: dict[int, tuple[int, int]] = {}  # fd 1 or 2 -> (memory file, the original fd)


def hold() -> None:
    """From now on fds 1 and 2 write into memory files (until handed over)."""
    _flush()
    for target in (1, 2):
        original = os.dup(target)
        memfd = os.memfd_create("icelaunch-early-output", os.MFD_CLOEXEC)
        os.dup2(memfd, target)
        _held[target] = (memfd, original)


def hand_over(new_fds: dict[int, int]) -> None:
    """Write what fds 1 and 2 held into ``new_fds`` (fd 1 or 2 -> the relayed stream's
    write end), before those become fds 1 and 2."""
    _flush()
    for target, (memfd, original) in _held.items():
        data = _read_all(memfd)
        if data and target in new_fds:
            _write_all(new_fds[target], data)
        os.close(memfd)
        os.close(original)
    _held.clear()


def give_back() -> None:
    """Never attached: fds 1 and 2 are the original streams again, with what was held."""
    if not _held:
        return
    _flush()
    for target, (memfd, original) in _held.items():
        data = _read_all(memfd)
        os.dup2(original, target)
        with contextlib.suppress(OSError):
            _write_all(target, data)
        os.close(memfd)
        os.close(original)
    _held.clear()


_MARK_NAME = "icelaunch-worker"
_mark_fd = -1


class WorkerMark:
    """An argument of every fork-server worker that tells it, before anything else
    runs, that it is an icelaunch worker (other programs may share the fork server).

    Pickled for the fork server, it passes along one descriptor, a memory file
    named ``icelaunch-worker``: the fork server hands such descriptors to the new
    process before ``spawn._main`` runs. Elsewhere it pickles to nothing.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing import context, reduction

        popen = context.get_spawning_popen()
        if popen is not None and type(popen).__module__ == "multiprocessing.popen_forkserver":
            reduction.DupFd(_launcher_mark())
        return (WorkerMark, ())


def _launcher_mark() -> int:
    global _mark_fd
    if _mark_fd < 0:
        _mark_fd = os.memfd_create(_MARK_NAME, os.MFD_CLOEXEC)
    return _mark_fd


def _is_icelaunch_worker() -> bool:
    """Whether the fork server handed this new process the launcher's mark (closed here)."""
    from multiprocessing import forkserver

    inherited = forkserver._forkserver._inherited_fds or []  # type: ignore[attr-defined]
    found = False
    for fd in inherited:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{_MARK_NAME} "):
                os.close(fd)
                found = True
    return found


def wrap_spawn_main() -> None:
    """In the fork server: every icelaunch worker it forks holds its early output."""
    from multiprocessing import spawn

    original: Callable[[int, int], Any] = spawn._main  # type: ignore[attr-defined]
    if getattr(original, "_icelaunch_holds", False):
        return

    def _main(fd: int, parent_sentinel: int) -> Any:
        if _is_icelaunch_worker():
            hold()
        try:
            return original(fd, parent_sentinel)
        finally:
            give_back()

    _main._icelaunch_holds = True  # type: ignore[attr-defined]
    spawn._main = _main  # type: ignore[attr-defined]


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
