"""Worker side: Python stacks written from C on a signal, and at a native crash.

faulthandler dumps from its C signal handler, so a rank answers even while it
blocks in a collective or holds the GIL in native code. The signal is SIGURG
(:data:`icelaunch._rundir.STACK_SIGNAL`), whose default action is to ignore it.
"""

from __future__ import annotations

import faulthandler
import os
from typing import IO

from icelaunch import _rundir
from icelaunch._diagnosis._format import Frame, is_library
from icelaunch._diagnosis._sampling import sampling_interval, start_sampler
from icelaunch._rundir import STACK_SIGNAL, Identity

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_open_files: list[IO[str]] = []  # faulthandler writes to their descriptors until exit


def setup_worker(run_dir: str, who: Identity) -> None:
    """Make this worker answer :data:`STACK_SIGNAL`, record native crashes and, while
    the launcher samples, sample its own main thread (``_sampling``).

    Args:
        run_dir: the launch attempt's run folder.
        who: this worker (its attempt and local rank name its files; its rank is
            written for the launcher).
    """
    attempt, local_rank = who.attempt, who.local_rank
    interval = sampling_interval(run_dir)
    if interval is not None:
        start_sampler(run_dir, who, interval)  # the launcher samples: no signal needed
    crash = open(_rundir.crash_path(run_dir, attempt, local_rank), "w")  # noqa: SIM115
    faulthandler.enable(file=crash, all_threads=True)
    _open_files.append(crash)
    if STACK_SIGNAL is None:
        return
    stacks = open(_rundir.stacks_path(run_dir, attempt, local_rank), "a")  # noqa: SIM115
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True, chain=False)
    _open_files.append(stacks)
    ready = _rundir.ready_path(run_dir, attempt, local_rank)
    with open(ready + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {_rundir.start_time(os.getpid())} {who.rank}\n")
    os.replace(ready + ".tmp", ready)


def without_bootstrap_frames(exc: BaseException) -> None:
    """Drop icelaunch's own frames from the outer end of ``exc``'s traceback.

    Only when user code follows them: an error inside icelaunch keeps them all.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    if tb is None or tb is exc.__traceback__:
        return
    code = tb.tb_frame.f_code
    if not is_library(Frame(code.co_filename, tb.tb_lineno, code.co_name)):
        exc.__traceback__ = tb
