"""How a script's worker ends: as Python ends a program, short of the interpreter's teardown.

In Python's teardown (``Py_FinalizeEx``), a thread that asks for the GIL is
ended with ``pthread_exit``. torch's own threads do ask for it: a gloo worker
thread that finishes a collective drops its reference to the tensors, and
dropping a tensor's Python object takes the GIL. Unwound through C++ that may
not throw, such a thread aborts the process ("terminate called without an
active exception", SIGABRT) after the script's last line. Destroying the
process group does not stop those threads while anything still holds the
group (DistributedDataParallel does); workers under torchrun meet the same
race.

:func:`exit_now` does what Python does before its teardown (non-daemon threads
joined, atexit callbacks run, streams flushed), collects the script's garbage
while the interpreter still runs (open files flushed, ``__del__`` run), then
ends the process with ``os._exit``, as multiprocessing's forked children end
(launched functions, from the warm fork server by default).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import sys
import threading
from typing import NoReturn


def exit_now(status: int) -> NoReturn:
    """End this process with ``status`` after Python's exit steps, without its teardown."""
    shutdown = getattr(threading, "_shutdown", None)  # what Py_FinalizeEx calls first
    if shutdown is not None:
        shutdown()  # threading's atexit hooks, then every non-daemon thread joined
    atexit._run_exitfuncs()
    atexit._clear()  # the callbacks no longer hold the script's namespace
    gc.collect()  # runpy dropped that namespace: its objects go now (files flushed, __del__)
    _flush_streams()
    os._exit(status)


def _flush_streams() -> None:
    """Python's streams, then C's (native code's printf, NCCL_DEBUG's lines): ``exit``
    flushes C's buffers, ``os._exit`` does not."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


def exit_status(exc: SystemExit) -> int:
    """The status Python exits with for ``sys.exit(code)``; a message goes to stderr, as
    Python writes it.

    >>> exit_status(SystemExit()), exit_status(SystemExit(3)), exit_status(SystemExit(-1))
    (0, 3, 255)
    """
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        print(code, file=sys.stderr)
    return 1
