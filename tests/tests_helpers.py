"""Worker functions shared by several test modules (importable by workers)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher


def all_reduce_sum(launcher: ElasticLauncher) -> float:
    """Sum of (rank + 1) over all ranks, through a real all_reduce."""
    t = torch.tensor([float(launcher.rank + 1)])
    dist.all_reduce(t)
    return float(t.item())
