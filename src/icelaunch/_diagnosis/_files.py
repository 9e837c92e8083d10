"""Where the per-rank diagnosis files of one launch attempt live."""

from __future__ import annotations

import os

RUN_DIR_ENV = "ICELAUNCH_RUN_DIR"  # tells a launched script where its run folder is


def stacks_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file a rank appends its stack dumps to."""
    return os.path.join(run_dir, f"stacks-{attempt}-{local_rank}.txt")


def ready_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file whose existence says the rank answers the stack signal: ``pid start rank``."""
    return os.path.join(run_dir, f"stacks-{attempt}-{local_rank}.pid")


def crash_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file faulthandler writes to when the rank crashes in native code."""
    return os.path.join(run_dir, f"crash-{attempt}-{local_rank}.txt")


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if gone or a zombie.

    With the pid it names one process for good: a pid reused later has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X", "x") else start
