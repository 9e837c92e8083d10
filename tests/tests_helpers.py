"""Worker functions shared by several test modules (importable by workers)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

import psutil
import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher


def all_reduce_sum(launcher: ElasticLauncher) -> float:
    """Sum of (rank + 1) over all ranks, through a real all_reduce."""
    t = torch.tensor([float(launcher.rank + 1)])
    dist.all_reduce(t)
    return float(t.item())


# multiprocessing's resource tracker and fork server are one per process, shared
# by every launch, and exit with that process: helpers, not leaked workers.
# (tests/test_warm_start.py checks that the fork server ends with its process.)
MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def is_mp_helper(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of multiprocessing's per-process helper processes."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(name in cmdline for name in MP_HELPERS)


def assert_gone(pids: Iterable[int], seconds: float = 10.0) -> None:
    """None of ``pids`` runs after at most ``seconds`` (a survivor is killed, then reported)."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while alive := [p for p in pids if is_running(p)]:
        if time.monotonic() > deadline:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"processes {alive} outlived their launch")
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
