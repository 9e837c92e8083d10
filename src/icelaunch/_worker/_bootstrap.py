"""Worker-side set-up that every worker runs first: launched functions and scripts alike.

``_run.run`` (functions) and ``_script`` (scripts run by the ``icelaunch``
command) read the worker's identity once and call :func:`bootstrap_common`
before any user code. A capability that needs a few lines inside every worker
adds one call here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from icelaunch import _console, _diagnosis
from icelaunch._rundir import Identity
from icelaunch._worker import _stopping

_PR_SET_PDEATHSIG = 1


def bootstrap_common(who: Identity | None, run_dir: str | None) -> None:
    """Prepare this worker process; once per process, before user code.

    Args:
        who: this worker's identity (None outside a launch: nothing to attach to).
        run_dir: the launch attempt's run folder (None: no stacks on request).
    """
    _console.attach(who)  # fds 1 and 2 become this rank's relayed stdout and stderr
    _stopping.setup(run_dir, who)  # where stop_requested() looks
    if who is not None and run_dir and os.path.isdir(run_dir):
        _diagnosis.setup_worker(run_dir, who)  # stacks on request, Python stack at crashes


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent ends (Linux), kept across ``exec``; exit now
    if the parent is not ``parent_pid`` any more (it died before this took effect)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
