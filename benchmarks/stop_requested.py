"""What ``icelaunch.current().stop_requested()`` costs per call, beside its floor.

Each of N CPU ranks (gloo) times, in one launch, side by side:

- ``stop_requested()``: a ``stat`` of the stop file and one all_reduce(MAX) of
  one integer on the default gloo group;
- the floor: one all_reduce of one integer, which any agreement among the
  ranks needs (a barrier costs the same);
- a training step's worth of nothing: the loop itself.

Prints microseconds per call (median of the ranks' means) and the ratio.

    python benchmarks/stop_requested.py [--ranks 2,4,8] [--calls 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def measure(launcher: Any, calls: int) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    import icelaunch

    ctx = icelaunch.current()
    ctx.stop_requested()  # the first call sets up (handlers, the polling file)
    flag = torch.zeros(1, dtype=torch.int32)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    floor = (time.perf_counter() - start) / calls
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        ctx.stop_requested()
    cost = (time.perf_counter() - start) / calls
    return {"stop_requested_us": cost * 1e6, "all_reduce_us": floor * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    from icelaunch import ElasticLauncher

    print("| ranks | stop_requested() per call | one all_reduce of one int (floor) | ratio |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.ranks.split(",")):
        launcher = ElasticLauncher(f"cpu:0-{n - 1}").freeze()
        results = launcher(measure, launcher, args.calls)
        cost = statistics.median(r["stop_requested_us"] for r in results.values())
        floor = statistics.median(r["all_reduce_us"] for r in results.values())
        print(f"| {n} | {cost:.0f} us | {floor:.0f} us | {cost / floor:.2f}x |")


if __name__ == "__main__":
    main()
