"""Slow-rank detection: how soon a slow rank is named, no false names, what sampling costs.

Every run is the ``icelaunch`` command launching ``slow_rank_job.py`` (a DDP loop)
with ``--report``; the numbers come from the run report and rank 0's mean step.

1. **detect**: one rank does 30 % more work in ``load_batch``, at each size
   (``--sizes``); the time from the workers' start to the first ``slow_rank``
   event, and whether the finding names that rank and ``load_batch``. The
   launch is stopped (``--stop-file``) once the launcher warns; a launch that
   never warns ends after ``--detect-limit`` seconds of training (a miss).
2. **quiet**: no slow rank, ``--quiet-seconds`` at 4 ranks, once on the machine
   as it is and once beside 2 busy ``python -c 'while 1: pass'`` processes; the
   ``slow_rank`` findings (there must be none), and how close the rule came.
3. **overhead**: no slow rank, ``--slow-rank off`` against the default, in
   ``--pairs`` interleaved pairs (off, on, off, on, ...) of ``--pair-seconds``
   each at 4 ranks: the mean step of each and the ratio.

Prints markdown tables with ratios; ``--json PATH`` writes every sample.

    python benchmarks/slow_rank.py [--only detect|quiet|overhead] [--repeats 3]
        [--sizes 4,8] [--units 4:60,8:30] [--quiet-seconds 300] [--pairs 5]
        [--pair-seconds 40] [--overhead-ranks 4] [--json PATH] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
JOB = os.path.join(HERE, "slow_rank_job.py")
FLAG_LINE = "is slowing the job"
LIMIT_S = 60.0  # the requirement: flagged within a minute of the workers' start
MAX_OVERHEAD = 0.01  # sampling may slow the loop by 1 % at most
SAMPLE_S = 0.5  # the ranks look at themselves this often while detection is on


def launch(
    n: int,
    units: float,
    seconds: float,
    slow: int = -1,
    sampling: bool = True,
    stop_on_flag: bool = False,
    keep: str | None = None,
) -> dict[str, Any]:
    """One ``icelaunch`` run of the job on ``n`` CPU ranks; what its report and output say
    (``keep``: a folder to copy the run report to)."""
    with tempfile.TemporaryDirectory(prefix="slowbench-") as tmp:
        report_path, stop_file = os.path.join(tmp, "run.json"), os.path.join(tmp, "stop")
        command = [sys.executable, "-m", "icelaunch", "--devices", f"cpu:0-{n - 1}"]
        command += ["--report", report_path] + ([] if sampling else ["--slow-rank", "off"])
        command += [JOB, "--seconds", str(seconds), "--stop-file", stop_file]
        command += ["--slow-rank", str(slow), "--extra", "0.3", "--units", str(units)]
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        code, lines = _run(command, stop_file if stop_on_flag else None, seconds + 180)
        wall = time.perf_counter() - began
        with open(report_path) as fh:
            report = json.load(fh)
        if keep:
            os.makedirs(keep, exist_ok=True)
            label = f"{n}ranks-slow{slow}-{'on' if sampling else 'off'}"
            kept = os.path.join(keep, f"{time.strftime('%H%M%S')}-{label}.json")
            shutil.copyfile(report_path, kept)
    result = read_report(report, slow)
    steps = [m for line in lines if (m := re.search(r"mean step ([\d.]+) ms, CPU ([\d.]+)", line))]
    if code != 0 and not steps:
        raise RuntimeError(f"{' '.join(command)} failed ({code}):\n" + "\n".join(lines[-40:]))
    result.update(
        ranks=n,
        units=units,
        slow=slow,
        sampling=sampling,
        mean_step_ms=float(steps[-1].group(1)) if steps else math.nan,
        cpu_ms=float(steps[-1].group(2)) if steps else math.nan,
        exit_status=code,  # not 0: a rank failed after training (at its exit)
        wall_s=round(wall, 1),
        load=[round(load_before, 1), round(os.getloadavg()[0], 1)],
        report=kept if keep else None,
    )
    return result


def _run(command: list[str], stop_file: str | None, limit: float) -> tuple[int, list[str]]:
    """Run ``command``; create ``stop_file`` once it warns of a slow rank. Its exit status
    and output lines."""
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if stop_file and FLAG_LINE in line:
                open(stop_file, "w").close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
    reader.join(timeout=5)
    return code, lines


def read_report(report: dict[str, Any], slow: int) -> dict[str, Any]:
    """Times and findings of one run report."""
    events = report["events"]
    started = next(e["t_s"] for e in events if e["kind"] == "workers_started")
    flags = [e for e in events if e["kind"] == "slow_rank"]
    findings = [f for f in report["findings"] if f["kind"] == "slow_rank"]
    first_step = min(
        (s[0] for r in report["ranks"] for s in r["states"] if (s[3] or "").startswith("load_b")),
        default=math.nan,
    )
    first = findings[0] if findings else None
    cpu = {r["rank"]: r["cpu_s"] or 0.0 for r in report["ranks"]}
    others = [c for rank, c in cpu.items() if rank != slow]
    shares = {r["rank"]: r.get("waited_share") for r in report["ranks"]}
    their_shares = [v for rank, v in shares.items() if rank != slow and v is not None]
    return {
        "flag_s": round(flags[0]["t_s"] - started, 2) if flags else None,
        "first_step_s": round(first_step - started, 2),
        "flag_rank": first["rank"] if first else None,
        "flag_function": first["function"] if first else None,
        "right": bool(first and first["rank"] == slow and first["function"] == "load_batch"),
        "findings": findings,
        "stalls": sum(1 for f in report["findings"] if f["kind"] == "stall"),
        "closest": report.get("slow_rank_closest") or {},
        # the evidence: the share of time the slow rank waited, the others' (median), CPU
        "slow_waited": shares.get(slow),
        "others_waited": statistics.median(their_shares) if their_shares else None,
        "slow_cpu": cpu[slow] / statistics.median(others) if slow in cpu and others else None,
    }


class Hog:
    """``count`` busy Python processes for the life of a ``with`` block."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Hog:
        for _ in range(self.count):
            self.procs.append(subprocess.Popen([sys.executable, "-c", "while 1: pass"]))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=30)


def _pct(share: float | None) -> float:
    return math.nan if share is None else 100 * share


def stat(values: list[float], digits: int = 1) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    low, high, mid = min(values), max(values), statistics.median(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def detect(
    sizes: list[int], units: dict[int, float], repeats: int, limit: float, keep: str | None
) -> list[Any]:
    """Each repeat: every size once, the slow rank the last but one (a rank of no note)."""
    runs = []
    for r in range(repeats):
        for n in sizes:
            run = launch(n, units[n], limit, slow=n - 2, stop_on_flag=True, keep=keep)
            runs.append(run)
            _note(f"detect {r + 1}/{repeats} x{n}", run)
    return runs


def detect_table(runs: list[dict[str, Any]], sizes: list[int], limit: float) -> str:
    rows = [
        "| ranks | units | mean step ms | flagged after s (workers started) | "
        "after the first step s | vs 60 s | right rank and function | time waiting in "
        "collectives, slow rank % (the others') | its CPU vs the others' | load | requirement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        mine = [r for r in runs if r["ranks"] == n]
        flags = [r["flag_s"] if r["flag_s"] is not None else math.inf for r in mine]
        after_step = [r["flag_s"] - r["first_step_s"] for r in mine if r["flag_s"] is not None]
        right = sum(r["right"] for r in mine)
        worst = max(flags)
        ok = worst <= LIMIT_S and right == len(mine)
        misses = sum(1 for f in flags if f == math.inf)
        flagged = stat([f for f in flags if f != math.inf])
        rows.append(
            f"| {n} | {mine[0]['units']:g} | {stat([r['mean_step_ms'] for r in mine], 0)} | "
            f"{flagged}{f', {misses} not in {limit:g} s of training' if misses else ''} | "
            f"{stat(after_step)} | "
            f"{'-' if worst == math.inf else f'{worst / LIMIT_S:.2f}x'} (worst) | "
            f"{right}/{len(mine)} | {stat([_pct(r['slow_waited']) for r in mine])} "
            f"({stat([_pct(r['others_waited']) for r in mine])}) | "
            f"{stat([r['slow_cpu'] for r in mine], 2)}x | {stat([r['load'][0] for r in mine])} | "
            f"{'met' if ok else 'NOT met'} |"
        )
    return "\n".join(rows)


def quiet(seconds: float, units: float, hog: int, keep: str | None) -> list[dict[str, Any]]:
    runs = []
    for busy in (0, hog):
        with Hog(busy):
            run = launch(4, units, seconds, keep=keep)
        run["hog"] = busy
        runs.append(run)
        _note(f"quiet, {busy} hogs", run)
    return runs


def quiet_table(runs: list[dict[str, Any]], seconds: float) -> str:
    rows = [
        f"| no slow rank, 4 ranks, {seconds:g} s | mean step ms | slow_rank findings | stalls | "
        "closest call (1 = named) | load | requirement |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        where = "idle machine" if not run["hog"] else f"beside {run['hog']} busy processes"
        near = run["closest"]
        detail = (
            f"{near['score']:.2f} (rank {near['rank']} waited {near['gap']:.1%} of the time "
            f"less than the others' median, {near['next_gap']:.1%} less than the next rank, "
            f"used {near['cpu_ratio'] or 0:.2f}x their CPU time)"
            if "rank" in near
            else "never judged"
        )
        rows.append(
            f"| {where} | {run['mean_step_ms']:.0f} | {len(run['findings'])} | {run['stalls']} | "
            f"{detail} | {run['load'][0]:.1f}-{run['load'][1]:.1f} | "
            f"{'met' if not run['findings'] else 'NOT met'} |"
        )
    return "\n".join(rows)


def overhead(
    pairs: int, seconds: float, units: float, keep: str | None, ranks: int = 4
) -> list[dict[str, Any]]:
    runs = []
    for p in range(pairs):
        for sampling in (False, True) if p % 2 == 0 else (True, False):  # ABBA: drift cancels
            run = launch(ranks, units, seconds, sampling=sampling, keep=keep)
            run["pair"] = p
            runs.append(run)
            _note(f"overhead {p + 1}/{pairs} sampling={'on' if sampling else 'off'}", run)
    return runs


def overhead_table(runs: list[dict[str, Any]], seconds: float) -> str:
    rows = [
        f"| {runs[0]['ranks']} ranks, {sum(1 for r in runs if r['sampling'])} interleaved pairs "
        f"of {seconds:g} s "
        "| mean | median (min-max) | vs off | per pair on / off: mean, min-max | noise (2 SE) |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for key, what in (("mean_step_ms", "step ms"), ("cpu_ms", "CPU ms a step, per rank")):
        off = [r[key] for r in sorted(runs, key=_pair) if not r["sampling"]]
        on = [r[key] for r in sorted(runs, key=_pair) if r["sampling"]]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        mean = statistics.mean(ratios)
        noise = 2 * statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else 0
        rows += [
            f"| {what}, `--slow-rank off` | {statistics.mean(off):.1f} | {stat(off)} "
            "| 1.000x | | |",
            f"| {what}, default (10 looks a second) | {statistics.mean(on):.1f} | {stat(on)} "
            f"| {statistics.mean(on) / statistics.mean(off):.3f}x | {mean:.3f}x "
            f"({min(ratios):.3f}-{max(ratios):.3f}) | +-{noise:.1%} |",
        ]
        if key == "mean_step_ms":
            notes.append(verdict(mean - 1, noise))
    cost = direct_costs()
    notes.append(
        f"\n\nDirect CPU cost of sampling, measured alone: a rank's look at its own main "
        f"thread {cost['look_ms']:.3f} ms, its sample file {cost['write_ms']:.3f} ms: "
        f"{cost['rank_percent']:.3f} % of a core at {cost['looks_per_s']:g} looks and 2 files a "
        "second; the "
        f"launcher reading and judging 4 ranks' samples {cost['launcher_extra_ms']:.3f} ms more "
        f"a sample than reading their /proc alone ({cost['launcher_without_ms']:.3f} ms): "
        f"{cost['launcher_extra_ms'] / SAMPLE_S / 10:.3f} % of a core."
    )
    return "\n".join(rows) + "\n\n" + " ".join(notes)


def _pair(run: dict[str, Any]) -> int:
    return int(run["pair"])


def direct_costs(ranks: int = 4, count: int = 2000) -> dict[str, float]:
    """CPU cost without noise: a rank's look at its own main thread and its sample file
    (ms each, and % of a core), and what the launcher does more for ``ranks`` ranks when it
    reads and judges their samples (ms a sample)."""
    from icelaunch import _rundir
    from icelaunch._diagnosis import _sampling
    from icelaunch._watching import Detector, Member, Sampler

    main = threading.main_thread()
    assert main.native_id is not None and main.ident is not None
    tid, ident = main.native_id, main.ident
    counter = _sampling._Counter(tid, ident)
    with tempfile.TemporaryDirectory(prefix="slowbench-") as run_dir:
        paths = [_rundir.sample_path(run_dir, 0, r) for r in range(ranks)]
        look = _deep(20, lambda: _cpu_ms(counter.look, count))
        frames = _deep(20, counter.look)
        write = _cpu_ms(lambda: counter.write(paths[0], frames), count)
        for path in paths[1:]:
            shutil.copyfile(paths[0], path)
        members = {r: Member(r, os.getpid()) for r in range(ranks)}
        sampler, detector = Sampler(interval_s=1e6), Detector(30.0)  # the files never age
        looks = _cpu_ms(lambda: detector.add(sampler.sample(run_dir, 0, members)), count)
        procs = _cpu_ms(lambda: sampler.sample(run_dir, 0, members, None), count)
    counter.close()
    per_s = _sampling.LOOKS_PER_SAMPLE * look / SAMPLE_S + write / SAMPLE_S  # ms a second
    return {
        "look_ms": look,
        "write_ms": write,
        "rank_percent": per_s / 10,
        "looks_per_s": _sampling.LOOKS_PER_SAMPLE / SAMPLE_S,
        "launcher_extra_ms": looks - procs,
        "launcher_without_ms": procs,
    }


def _cpu_ms(work: Any, count: int) -> float:
    began = time.thread_time()
    for _ in range(count):
        work()
    return (time.thread_time() - began) / count * 1000


def _deep(depth: int, work: Any) -> Any:
    """``work()`` from ``depth`` frames down (a training loop's stack is as deep)."""
    return work() if depth == 0 else _deep(depth - 1, work)


def verdict(slower: float, noise: float) -> str:
    """The overhead requirement, said with the noise of the measurement."""
    within = abs(slower) <= noise
    said = f"step time {slower:+.1%} with sampling, {'within' if within else 'beyond'} noise"
    if slower <= MAX_OVERHEAD and not (within and noise > MAX_OVERHEAD):
        return f"{said}: requirement (at most {MAX_OVERHEAD:.0%} slower) met."
    if within:
        return (
            f"{said} (+-{noise:.1%}): too noisy to show the {MAX_OVERHEAD:.0%} requirement "
            "met or not."
        )
    return f"{said}: requirement (at most {MAX_OVERHEAD:.0%} slower) NOT met."


def _note(what: str, run: dict[str, Any]) -> None:
    print(
        f"  {what}: step {run['mean_step_ms']:.0f} ms, CPU {run['cpu_ms']:.0f} ms, "
        f"flag {run['flag_s']} s (exit {run['exit_status']}) "
        f"({run['flag_rank']}, {run['flag_function']}), {len(run['findings'])} findings, "
        f"closest {run['closest'].get('score', '-')}, load {run['load']}, {run['wall_s']} s",
        file=sys.stderr,
        flush=True,
    )


def parse_units(text: str, sizes: list[int]) -> dict[int, float]:
    """``60`` (every size) or ``4:60,8:30`` (by size)."""
    if ":" not in text:
        return {n: float(text) for n in sizes}
    units = {int(k): float(v) for k, v in (part.split(":") for part in text.split(","))}
    return {n: units[n] for n in sizes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["detect", "quiet", "overhead"])
    parser.add_argument("--repeats", type=int, default=3, help="detection launches per size")
    parser.add_argument("--sizes", default="4,8")
    parser.add_argument("--units", default="4:60,8:30", help="work per step: N or SIZE:N,...")
    parser.add_argument("--detect-limit", type=float, default=90.0, help="seconds of training")
    parser.add_argument("--quiet-seconds", type=float, default=300.0)
    parser.add_argument("--hog", type=int, default=2, help="busy processes beside one quiet run")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--pair-seconds", type=float, default=40.0)
    parser.add_argument("--overhead-ranks", type=int, default=4, help="ranks of the pairs")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--keep", metavar="DIR", help="keep every run report in DIR")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    units = parse_units(args.units, sorted({*sizes, 4}))
    began = time.time()
    result: dict[str, Any] = {"units": units, "started_at": began}
    tables = []

    def save() -> None:  # after each part: what was measured survives a failure later
        if args.json_path:
            with open(args.json_path, "w") as fh:
                json.dump(result, fh, indent=1)

    if args.only in (None, "detect"):
        result["detect"] = detect(sizes, units, args.repeats, args.detect_limit, args.keep)
        tables.append(
            f"Detection: one rank 30 % slower in `load_batch`, {args.repeats} launches each\n\n"
            + detect_table(result["detect"], sizes, args.detect_limit)
        )
        save()
    if args.only in (None, "quiet"):
        result["quiet"] = quiet(args.quiet_seconds, units[4], args.hog, args.keep)
        tables.append("No false flag\n\n" + quiet_table(result["quiet"], args.quiet_seconds))
        save()
    if args.only in (None, "overhead"):
        result["overhead"] = overhead(
            args.pairs, args.pair_seconds, units[4], args.keep, args.overhead_ranks
        )
        tables.append(
            "Sampling overhead, interleaved off/on\n\n"
            + overhead_table(result["overhead"], args.pair_seconds)
        )
    runs = [r for part in ("detect", "quiet", "overhead") for r in result.get(part, [])]
    crashed = sum(1 for r in runs if r["exit_status"] != 0)
    if crashed:
        tables.append(
            f"{crashed} of {len(runs)} launches: a rank failed at its exit, after training"
        )
    print("\n\n".join(tables))
    print(f"\n(slow rank: {time.time() - began:.0f} s; medians with min-max; load: 1-min average)")
    save()
    return result


if __name__ == "__main__":
    main()
