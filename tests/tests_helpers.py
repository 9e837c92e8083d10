"""Worker functions shared by several test modules (importable by workers)."""

from __future__ import annotations

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
