"""A script for the ``icelaunch`` command: every worker adds its rank into one sum.

Run: ``icelaunch --devices cpu:0-3 examples/cli_allreduce.py`` (or ``cuda:*``).
Each rank prints its place in the job and the result of an all_reduce, which is
``0 + 1 + ... + (world_size - 1)`` on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import icelaunch


def main() -> int:
    """Join the process group, all_reduce the ranks, print and check the sum."""
    ctx = icelaunch.init_process_group()
    value = torch.tensor([float(ctx.rank)], device=ctx.assigned_device)
    dist.all_reduce(value)
    expected = ctx.world_size * (ctx.world_size - 1) // 2
    print(
        f"rank {ctx.rank}/{ctx.world_size} local_rank {ctx.local_rank} "
        f"device {ctx.assigned_device} backend {ctx.dist_backend}: "
        f"all_reduce sum {int(value.item())} (expected {expected})"
    )
    return 0 if int(value.item()) == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
