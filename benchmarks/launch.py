"""Launch speed: icelaunch against torchrun, elastic_launch and mp.spawn, side by side.

Every run is a fresh process doing the same job per worker (join a gloo group,
one all_reduce); runs are interleaved (A B C ... A B C ...) so machine noise
hits every peer alike. Prints a markdown table and ratios; ``--json PATH``
writes every sample.

    python benchmarks/launch.py [--repeats 3] [--sizes 1,4,8] [--json out.json]
                                [--peers icelaunch,torchrun] [--scaling 0]
                                [--no-interactive] [--no-console] [--no-slow-rank]

Then, unless told not to, ``interactive.py`` (warm relaunch, large data, cold
start), ``console.py`` (worker output through a terminal, against ``cat``) and
``slow_rank.py`` (slow-rank detection: time to flag, no false flag, sampling's
cost; about 30 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = [
    "icelaunch",
    "icelaunch-fastest",
    "icelaunch-cold",
    "torchrun",
    "elastic_launch",
    "mp.spawn",
]
LABELS = {
    "icelaunch": "icelaunch, seed defaults (spawn, warm start)",
    "icelaunch-fastest": "icelaunch, fastest (defaults + icelaunch.warm_up() first)",
    "icelaunch-cold": "icelaunch, warm_start=False (plain spawn)",
    "torchrun": "torchrun --standalone",
    "elastic_launch": "torch elastic_launch (spawn)",
    "mp.spawn": "torch.multiprocessing.spawn",
}


def run_once(peer: str, n: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """One fresh process of ``peer`` with ``n`` workers; its numbers and lifetime.

    The lifetime ends when the process exits (as a shell sees it); output goes to
    files, since a pipe stays open while any descendant (a fork server finishing
    in the background) still holds it.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "peers.py"), peer, str(n)],
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        code = proc.wait(timeout=300)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"{peer} x{n} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    result: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def collect(sizes: list[int], repeats: int) -> dict[str, dict[int, list[dict[str, float]]]]:
    """Interleaved samples: for each repeat, every size, every peer once."""
    samples: dict[str, dict[int, list[dict[str, float]]]] = {p: {} for p in PEERS}
    for r in range(repeats):
        for n in sizes:
            for peer in PEERS:
                samples[peer].setdefault(n, []).append(run_once(peer, n))
                print(f"  repeat {r + 1}/{repeats}  {peer:15} x{n:<2} done", file=sys.stderr)
    return samples


def stat(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def med(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def table(samples: dict[str, dict[int, list[dict[str, float]]]], sizes: list[int]) -> str:
    rows = [
        "| launcher | workers | whole process s | launch call s | return lag s | parent RSS MB |"
        " vs torchrun |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        base = med(samples["torchrun"][n], "wall_s") if "torchrun" in PEERS else float("nan")
        for peer in PEERS:
            runs = samples[peer][n]
            cells = [stat([s[key] for s in runs]) for key in ("wall_s", "call_s", "return_lag_s")]
            ratio = med(runs, "wall_s") / base
            rows.append(
                f"| {LABELS[peer]} | {n} | {' | '.join(cells)} | "
                f"{med(runs, 'rss_mb'):.0f} | {'-' if ratio != ratio else f'{ratio:.2f}x'} |"
            )
    return "\n".join(rows)


def return_lags(samples: dict[str, dict[int, list[dict[str, float]]]], sizes: list[int]) -> str:
    """Return lag (last worker's function returned -> the call returned) in ms."""
    lines = ["return lag, median (min-max) ms:"]
    for peer in samples:
        cells = []
        for n in sizes:
            lags = [s["return_lag_s"] * 1000 for s in samples[peer][n]]
            spread = f"{min(lags):.1f}-{max(lags):.1f}"
            cells.append(f"{n} workers {statistics.median(lags):.1f} ({spread})")
        lines.append(f"  {LABELS[peer]:48} " + "; ".join(cells))
    return "\n".join(lines)


def per_worker_cost(samples: dict[str, dict[int, list[dict[str, float]]]], sizes: list[int]) -> str:
    lo, hi = min(sizes), max(sizes)
    if lo == hi:
        return "(one size only: no per-worker cost)"
    lines = [f"cost of each extra worker, {lo} to {hi} workers (whole process, medians):"]
    for peer in samples:
        slope = (med(samples[peer][hi], "wall_s") - med(samples[peer][lo], "wall_s")) / (hi - lo)
        lines.append(f"  {LABELS[peer]:48} {slope * 1000:6.0f} ms/worker")
    return "\n".join(lines)


def warm_and_failure(n: int, repeats: int) -> dict[str, list[float]]:
    """icelaunch only: a second launch in one process, and failure teardown."""
    found: dict[str, list[float]] = {"second_s": [], "teardown_s": []}
    for _ in range(repeats):
        result = run_once("icelaunch", n, {"BENCH_SECOND": "1", "BENCH_FAIL": "1"})
        found["second_s"].append(result["second_s"])
        found["teardown_s"].append(result["teardown_s"])
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="1,4,8")
    parser.add_argument("--scaling", type=int, default=16, help="also time this many (0: skip)")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--peers", default=",".join(PEERS), help="which to time")
    parser.add_argument("--no-interactive", dest="interactive", action="store_false")
    parser.add_argument("--no-console", dest="console", action="store_false")
    parser.add_argument("--no-slow-rank", dest="slow_rank", action="store_false")
    args = parser.parse_args(argv)
    PEERS[:] = [p for p in PEERS if p in args.peers.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    began = time.time()
    samples = collect(sizes, args.repeats)
    extra = warm_and_failure(4, args.repeats)
    report = [
        table(samples, sizes),
        "",
        per_worker_cost(samples, sizes),
        "",
        return_lags(samples, sizes),
        "",
        f"icelaunch, 4 workers: second launch in the same process {stat(extra['second_s'])} s; "
        f"one rank failing -> call raises {stat(extra['teardown_s'])} s",
    ]
    if args.scaling:
        big = {p: [run_once(p, args.scaling)] for p in ("icelaunch", "torchrun")}
        for peer, runs in big.items():
            samples[peer][args.scaling] = runs
        report += ["", per_worker_cost({p: samples[p] for p in big}, [sizes[0], args.scaling])]
    report.append(f"\n(one run, {time.time() - began:.0f} s; medians with min-max)")
    print("\n".join(report))
    result = {"samples": samples, "icelaunch_4": extra, "sizes": sizes}
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.interactive:  # warm relaunch vs the floor, large data, cold start
        sys.path.insert(0, HERE)
        import interactive

        interactive.main(["--repeats", str(args.repeats)])
    if args.console:  # the console relay's throughput through a terminal, against cat
        sys.path.insert(0, HERE)
        import console

        console.main(["--repeats", str(args.repeats)])
    if args.slow_rank:  # slow-rank detection: time to flag, no false flag, sampling's cost
        sys.path.insert(0, HERE)
        import slow_rank

        slow_rank.main(["--repeats", str(args.repeats)])
    return result


if __name__ == "__main__":
    main()
