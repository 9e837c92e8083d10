"""The end of a successful launch, finished after its call returned.

Once every rank's value is in the launcher, the call returns; what is left —
the workers ending on their own (their process groups destroyed), the stop
path's sweep for anything they left running, the console relay's last bytes,
the job folder — runs in a background thread. Nothing is abandoned: a
teardown that the workers do not finish in :data:`EXIT_WAIT_S` stops them our
usual way; :func:`wait` joins every pending teardown, and runs at interpreter
exit; a launch on CUDA devices waits for earlier teardowns before it starts
(their workers may still hold device memory).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

EXIT_WAIT_S = 30.0  # how long returned workers may take to end on their own

_lock = threading.Lock()
_pending: set[threading.Thread] = set()
_atexit_registered = False


def defer(stack: contextlib.ExitStack, name: str) -> None:
    """Close ``stack`` in a background thread (its callbacks in the usual order)."""
    global _atexit_registered
    thread = threading.Thread(target=_close, args=(stack, name), name=f"icelaunch-teardown-{name}")
    thread.daemon = True  # joined at exit by wait(), after the main thread's own atexit work
    with _lock:
        if not _atexit_registered:
            atexit.register(wait)
            os.register_at_fork(after_in_child=_forget_in_child)
            _atexit_registered = True
        _pending.add(thread)
    thread.start()


def _close(stack: contextlib.ExitStack, name: str) -> None:
    try:
        stack.close()
    except Exception:
        logger.exception("finishing the launch of %s failed", name)
    finally:
        with _lock:
            _pending.discard(threading.current_thread())


def wait(timeout: float | None = None) -> bool:
    """Wait until the teardowns of earlier launches are finished; True if none is left.

    ``timeout`` (seconds) bounds the wait; None waits for all.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _lock:
            threads = [t for t in _pending if t is not threading.current_thread()]
        if not threads:
            return True
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        threads[0].join(left)


def _forget_in_child() -> None:
    """A forked process has none of its parent's threads."""
    global _lock
    _lock = threading.Lock()
    _pending.clear()
