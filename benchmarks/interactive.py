"""Interactive speed: warm relaunch against the floor and accelerate's notebook_launcher,
large arguments and results, cold start; printed as markdown tables.

    python benchmarks/interactive.py [--repeats 3] [--sizes 4,8] [--no-gb] [--json PATH]

Warm relaunch: each peer is one process that launches once to warm up, then
``--repeats`` times, one peer after the other. Data: one icelaunch process with 4
workers; the process tree's peak PSS is sampled every 10 ms by a separate process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ["floor", "icelaunch", "notebook_launcher"]
LABELS = {
    "floor": "floor: torch imported, fork N, gloo over a FileStore, all_reduce",
    "icelaunch": "icelaunch, seed defaults (spawn guarantees, warm fork server)",
    "notebook_launcher": "accelerate notebook_launcher (fork)",
}


def peer_run(*argv: str, timeout: float = 600) -> tuple[dict[str, Any], float]:
    """One fresh ``interactive_peers.py`` process: its JSON line and its lifetime.

    A process that runs past ``timeout`` (a hung launch) is killed with all its
    children; its last JSON line is returned with ``"hung": True``.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "interactive_peers.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        lines = [x for x in stdout.splitlines() if x.startswith("{")]
        last = json.loads(lines[-1]) if lines else {"partial": []}
        return {"times": last["partial"], "hung": True}, time.perf_counter() - start
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), wall


def stat(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def warm_table(sizes: list[int], repeats: int) -> tuple[str, dict[str, Any]]:
    times: dict[str, dict[int, list[float]]] = {p: {n: [] for n in sizes} for p in PEERS}
    hung: set[tuple[str, int]] = set()
    for n in sizes:
        for peer in PEERS:
            result, _ = peer_run("warm", peer, str(n), str(max(1, repeats)), timeout=180)
            times[peer][n] += result["times"]
            if result.get("hung"):
                hung.add((peer, n))
    rows = ["| launcher | workers | warm relaunch s | vs floor |", "|---|---|---|---|"]
    for n in sizes:
        floor = statistics.median(times["floor"][n])
        for peer in PEERS:
            runs = times[peer][n]
            note = f" (a launch hung after {len(runs)})" if (peer, n) in hung else ""
            cells = f"{stat(runs)} | {statistics.median(runs) / floor:.2f}x" if runs else "- | -"
            rows.append(f"| {LABELS[peer]} | {n} | {cells}{note} |")
    return "\n".join(rows), times


def data_table(repeats: int, with_gb: bool) -> tuple[str, dict[str, Any]]:
    argv = ["data", str(repeats)] + (["--gb"] if with_gb else [])
    result, _ = peer_run(*argv)
    rows_in: dict[str, list[list[float]]] = result["rows"]
    tiny_s = statistics.median(s for s, _ in rows_in["tiny argument"])
    tiny_pss = statistics.median(p for _, p in rows_in["tiny argument"])
    none_s = statistics.median(s for s, _ in rows_in["4 ranks making 100 MB, returning None"])
    rows = [
        "| icelaunch, 4 warm workers | call s | vs tiny | tree peak PSS GB | over tiny |",
        "|---|---|---|---|---|",
    ]
    for name, samples in rows_in.items():
        secs = [s for s, _ in samples]
        pss = statistics.median(p for _, p in samples)
        size = _size_bytes(name)
        over = f"{(pss - tiny_pss) / size:.2f}x the data" if size else ""
        rows.append(
            f"| {name} | {stat(secs)} | {statistics.median(secs) / tiny_s:.2f}x | "
            f"{pss / 1e9:.2f} | {over} |"
        )
    returning = statistics.median(s for s, _ in rows_in["4 ranks each returning 100 MB"])
    rows.append(f"\nreturning 4 x 100 MB adds {returning - none_s:.3f} s to the call")
    for mb in (100, 400):
        first = statistics.median(s for s, _ in rows_in[f"{mb} MB tensor argument, first launch"])
        floor_name = f"{mb} MB tensor argument: floor, its bytes written to a memfd, no launch"
        copy = statistics.median(s for s, _ in rows_in[floor_name])
        rows.append(
            f"{mb} MB first launch: {first - tiny_s:.3f} s over a tiny argument; "
            f"the copy to shared memory alone takes {copy:.3f} s "
            f"({(first - tiny_s) / copy:.2f}x the copy's floor)"
        )
    return "\n".join(rows), rows_in


def _size_bytes(name: str) -> int:
    if "argument" not in name or name.startswith("tiny"):
        return 0
    number, unit = name.split()[:2]
    return int(number) * (1_000_000_000 if unit == "GB" else 1_000_000)


def cold_table(repeats: int, n: int = 4) -> tuple[str, dict[str, Any]]:
    torch_s, job_s, warm_s = [], [], []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, timeout=300)
        torch_s.append(time.perf_counter() - start)
        job_s.append(peer_run("cold", str(n))[1])
        warm_s.append(peer_run("cold", str(n), "--warm-up")[1])
    base = statistics.median(torch_s)
    text = (
        f"cold start: a {n}-worker job, whole process {stat(job_s)} s, "
        f'{statistics.median(job_s) / base:.2f}x `python -c "import torch"` ({stat(torch_s)} s); '
        f"with `icelaunch.warm_up()` before `import torch`: {stat(warm_s)} s, "
        f"{statistics.median(warm_s) / base:.2f}x"
    )
    return text, {"torch": torch_s, "job": job_s, "warm_up": warm_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--no-gb", dest="gb", action="store_false", help="skip the 1 GB row")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    began = time.time()
    sizes = [int(x) for x in args.sizes.split(",")]
    warm_text, warm = warm_table(sizes, args.repeats)
    data_text, data = data_table(args.repeats, args.gb)
    cold_text, cold = cold_table(args.repeats)
    print("\n\n".join([warm_text, data_text, cold_text]))
    print(f"\n(interactive: {time.time() - began:.0f} s; medians with min-max)")
    result = {"warm": warm, "data": data, "cold": cold}
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
