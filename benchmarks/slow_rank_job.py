"""A DDP training loop in which one rank may be slow: the workload of the slow-rank checks.

Every rank loads a batch (``load_batch``: CPU work in torch), runs an MLP forward
and backward under DistributedDataParallel (gloo all-reduce of the gradients)
and steps its optimiser. ``--slow-rank R --extra 0.3`` makes rank R do 30 % more
work in ``load_batch``. Runs ``--seconds`` or until the file ``--stop-file``
appears; rank 0 prints the mean step time at the end, and the CPU time per step
(this process's, every thread's: the work and anything beside it) averaged over
the ranks.

    icelaunch --devices cpu:0-3 benchmarks/slow_rank_job.py --slow-rank 2 --extra 0.3
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import icelaunch


def load_batch(generator: torch.Generator, units: float, size: int = 320) -> torch.Tensor:
    """A batch after ``units`` rounds of CPU work (decoding, augmenting: matrix products)."""
    x = torch.randn(size, size, generator=generator)
    whole, part = int(units), units - int(units)
    for _ in range(whole):
        x = torch.tanh(x @ x.T / size)
    if part:
        rows = max(1, int(size * part))
        x[:rows] = torch.tanh(x[:rows] @ x.T / size)
    return x[:64, :128]


def train(
    seconds: float, stop_file: str, slow_rank: int, extra: float, units: float
) -> tuple[float, float]:
    """Train until ``seconds`` pass or ``stop_file`` exists; the mean step time and CPU time."""
    ctx = icelaunch.current()
    rank = ctx.rank
    torch.manual_seed(0)
    model = DistributedDataParallel(
        nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    mine = units * (1 + extra) if rank == slow_rank else units
    flag = torch.zeros(1)
    steps, began, cpu = 0, time.monotonic(), time.process_time()
    while True:
        batch = load_batch(gen, mine)
        loss = model(batch).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 10 == 0:  # every rank agrees when to stop
            flag.fill_(float(time.monotonic() - began > seconds or os.path.exists(stop_file)))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                break
    return (time.monotonic() - began) / steps, (time.process_time() - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--stop-file", default="")
    parser.add_argument("--slow-rank", type=int, default=-1)
    parser.add_argument("--extra", type=float, default=0.3)
    parser.add_argument("--units", type=float, default=60.0)
    args = parser.parse_args()
    icelaunch.init_process_group()
    step, cpu = train(args.seconds, args.stop_file, args.slow_rank, args.extra, args.units)
    mean_cpu = torch.tensor([cpu])
    dist.all_reduce(mean_cpu)
    if icelaunch.current().rank == 0:
        per_rank = mean_cpu.item() / dist.get_world_size()
        print(f"mean step {step * 1000:.1f} ms, CPU {per_rank * 1000:.1f} ms a step", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
