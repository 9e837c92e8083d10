"""Which thread of a rank pays for slow-rank sampling: per-thread CPU time from ``/proc``.

Launches ``slow_rank_job.py`` (4 ranks, no slow rank) through the ``icelaunch``
command with sampling on, reads every thread's CPU ticks of each rank near
the end of the run, and prints them, the sampling thread's share of its
rank's CPU time and of one core. The sampling thread is the thread of a rank
whose name is ``python`` apart from the main one (gloo's threads name
themselves); a run with ``--slow-rank off`` beside it shows it is the extra one.

    python benchmarks/sampler_threads.py [--seconds 30] [--ranks 4]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "slow_rank_job.py")


def threads(pid: int) -> dict[int, tuple[str, int]]:
    """tid -> (name, user + system clock ticks) of every thread of ``pid``."""
    found = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"{task}/comm") as fh:
                name = fh.read().strip()
        except OSError:
            continue
        found[int(os.path.basename(task))] = (name, int(fields[11]) + int(fields[12]))
    return found


def measure(ranks: int, seconds: float, sampling: bool) -> list[dict[int, tuple[str, int]]]:
    """Each rank's threads, ``seconds - 3`` s into a run (sampling on or off)."""
    command = [sys.executable, "-m", "icelaunch", "--devices", f"cpu:0-{ranks - 1}"]
    command += [] if sampling else ["--slow-rank", "off"]
    command += [JOB, "--seconds", str(seconds)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds - 3)
        children = psutil.Process(proc.pid).children(recursive=True)
        pids = [c.pid for c in children if JOB in " ".join(c.cmdline())]
        return [threads(pid) for pid in pids]
    finally:
        proc.wait(timeout=seconds + 120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ranks", type=int, default=4)
    args = parser.parse_args()
    tick = os.sysconf("SC_CLK_TCK")
    for sampling in (True, False):
        print(f"sampling {'on' if sampling else 'off'}:")
        for number, rank in enumerate(measure(args.ranks, args.seconds, sampling)):
            main_tid = min(rank)  # the main thread's tid is the process id
            total = sum(ticks for _, ticks in rank.values())
            extra = [t for t, (name, _) in rank.items() if name == "python" and t != main_tid]
            shown = ", ".join(f"{name} {ticks}" for _, (name, ticks) in sorted(rank.items()))
            line = f"  rank process {number}: {len(rank)} threads, {total} ticks ({shown})"
            if sampling and extra:
                own = sum(rank[t][1] for t in extra)
                line += (
                    f"; the other python thread(s): {own} ticks = {own / total:.2%} of the "
                    f"rank's CPU, {own / tick / (args.seconds - 3):.2%} of a core"
                )
            print(line)


if __name__ == "__main__":
    main()
