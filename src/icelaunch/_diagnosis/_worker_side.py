"""Worker side: Python stacks written from C on a signal, and at a native crash.

faulthandler dumps from its C signal handler, so a rank answers even while it
blocks in a collective or holds the GIL in native code. The signal is a
real-time one: SIGUSR1/SIGUSR2 belong to SLURM and Lightning (preemption) and
torch's own fatal-signal handler; glibc keeps the two below SIGRTMIN.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from typing import IO

from icelaunch._diagnosis import _files
from icelaunch._diagnosis._format import Frame, is_library

STACK_SIGNAL: int | None = int(signal.SIGRTMIN) + 7 if hasattr(signal, "SIGRTMIN") else None
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_open_files: list[IO[str]] = []  # faulthandler writes to their descriptors until exit


def setup_worker(run_dir: str, attempt: int, local_rank: int, rank: int) -> None:
    """Make this worker answer :data:`STACK_SIGNAL` and record native crashes.

    Args:
        run_dir: the launch attempt's run folder.
        attempt: the restart count.
        local_rank: this worker's local rank (names its files).
        rank: its global rank (written for the launcher).
    """
    crash = open(_files.crash_path(run_dir, attempt, local_rank), "w")  # noqa: SIM115
    faulthandler.enable(file=crash, all_threads=True)
    _open_files.append(crash)
    if STACK_SIGNAL is None:
        return
    stacks = open(_files.stacks_path(run_dir, attempt, local_rank), "a")  # noqa: SIM115
    # Ignored, not fatal, once faulthandler restores it at interpreter exit.
    signal.signal(STACK_SIGNAL, signal.SIG_IGN)
    faulthandler.register(STACK_SIGNAL, file=stacks, all_threads=True, chain=False)
    _open_files.append(stacks)
    ready = _files.ready_path(run_dir, attempt, local_rank)
    with open(ready + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {_files.start_time(os.getpid())} {rank}\n")
    os.replace(ready + ".tmp", ready)


def setup_worker_from_env() -> None:
    """:func:`setup_worker` for a launched script, from its environment; nothing outside one."""
    run_dir = os.environ.get(_files.RUN_DIR_ENV)
    if not run_dir or "LOCAL_RANK" not in os.environ or not os.path.isdir(run_dir):
        return
    setup_worker(
        run_dir,
        int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ.get("RANK", os.environ["LOCAL_RANK"])),
    )


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
