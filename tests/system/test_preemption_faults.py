"""Preemption at a random moment, many times: every checkpoint written, all at one step.

A 4-rank training loop (a launched function, and a script under the command)
saves every rank's step when ``stop_requested()`` says so, with a save that
takes 0.5-3 s. Each launch is preempted by SIGTERM, SIGUSR1 or SIGINT at a
random moment: the ranks' start-up, mid-step, during a save, or around a
restart (a rank fails once, early). Checked for each launch:

- no rank that made progress lacks a checkpoint, and every checkpoint holds
  the same step (a rank stopped before its first step has none);
- no rank was SIGKILLed (the grace is long enough), nothing is left running;
- the outcome: a stop raises ``LaunchStopped`` (the command exits 128 + the
  signal); SIGUSR1 is a notice: the ranks save and return, the launch succeeds.

``ICELAUNCH_PREEMPT_LAUNCHES`` sets the count (default 12 functions and 1 script in
the suite, a fresh seed each run; 30 or more to hunt a race);
``ICELAUNCH_PREEMPT_SEED`` the seed (printed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_gone, icelaunch, write

pytestmark = [pytest.mark.slow]

LAUNCHES = int(os.environ.get("ICELAUNCH_PREEMPT_LAUNCHES", "12"))
SCRIPT_LAUNCHES = max(1, LAUNCHES // 10)
SEED = int(os.environ.get("ICELAUNCH_PREEMPT_SEED", str(random.randrange(1 << 30))))
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

TRAIN = """
import os, random, sys, time
from pathlib import Path
import icelaunch

def train(out, save_s, fail_step):
    import torch
    import torch.distributed as dist
    ctx = icelaunch.current()
    rank, attempt = ctx.rank, ctx.restart_count
    Path(out, f"pid-{attempt}-{rank}").write_text(str(os.getpid()))
    Path(out, "up").touch()
    time.sleep(random.Random(rank).uniform(0, 0.3))  # the rank's own start-up
    step = 0
    while True:
        if ctx.stop_requested():
            time.sleep(save_s)
            Path(out, f"ckpt-{attempt}-{rank}").write_text(str(step))
            return step
        if fail_step >= 0 and attempt == 0 and rank == 1 and step == fail_step:
            Path(out, "failed").touch()
            raise RuntimeError("a failure, for a restart")
        t = torch.ones(1)
        dist.all_reduce(t)
        time.sleep(0.02)
        step += 1
        Path(out, f"step-{attempt}-{rank}").write_text(str(step))
        if step >= 3000:
            return -1  # never preempted
"""

FUNCTIONS = (
    TRAIN
    + """
import json, signal, threading
from icelaunch import ElasticLauncher, LaunchStopped

def run(launcher, out, save_s, fail_step):
    return train(out, save_s, fail_step)

def preempt(out, sig, delay):
    while not Path(out, "up").exists():
        time.sleep(0.005)
    time.sleep(delay)
    os.kill(os.getpid(), sig)

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: print("late SIGTERM", flush=True))
    plan = json.loads(sys.argv[1])
    launcher = ElasticLauncher(
        "cpu:0-3", max_restarts=1, shutdown_timeout=30, monitor_interval=0.5
    ).freeze()
    for i, (name, delay, save_s, fail_step) in enumerate(plan):
        out = Path(sys.argv[2], str(i))
        out.mkdir()
        sig = getattr(signal, name)
        thread = threading.Thread(target=preempt, args=(out, sig, delay))
        thread.start()
        result = {"i": i}
        try:
            result["values"] = launcher(run, launcher, str(out), save_s, fail_step)
            result["outcome"] = "returned"
        except LaunchStopped as stop:
            result.update(outcome="stopped", signal=stop.signal, killed=sorted(stop.killed_ranks),
                          exits=stop.exits, values=stop.values, message=str(stop))
        except Exception as exc:
            result["outcome"] = f"{type(exc).__name__}: {exc}"
        thread.join()
        print(json.dumps(result), flush=True)
"""
)

SCRIPT = (
    TRAIN
    + """
if __name__ == "__main__":
    icelaunch.init_process_group()
    step = train(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
    print("returned", step)
"""
)


def _plan(rng: random.Random, count: int) -> list[tuple[str, float, float, int]]:
    """(signal, delay after the ranks start, save seconds, step of the injected failure)."""
    plan = []
    for _ in range(count):
        fail_step = rng.choice([-1, -1, rng.randint(0, 8)])  # a restart in 1 launch of 3
        plan.append((rng.choice(SIGNALS), rng.uniform(0, 1.5), rng.uniform(0.5, 3.0), fail_step))
    return plan


def _check_checkpoints(out: Path, what: str) -> tuple[int, int | None]:
    """(attempt, the one step every checkpoint holds); fails on a lost or uneven one."""
    attempt = 1 if (out / "failed").exists() else 0  # the last attempt (max_restarts=1)
    steps = {int(p.name.split("-")[2]): int(p.read_text()) for p in out.glob(f"ckpt-{attempt}-*")}
    progressed = {int(p.name.split("-")[2]) for p in out.glob(f"step-{attempt}-*")}
    lost = progressed - set(steps)
    assert not lost, f"ranks {sorted(lost)} made progress but wrote no checkpoint: {what}"
    assert len(set(steps.values())) <= 1, f"checkpoints at different steps: {steps}: {what}"
    return attempt, next(iter(steps.values()), None)


def _pids(out: Path) -> list[int]:
    return [int(p.read_text()) for p in out.glob("pid-*")]


@pytest.mark.timeout(900)
def test_functions_preempted_at_random_moments_keep_every_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    plan = _plan(rng, LAUNCHES)
    program = write(tmp_path, "program.py", FUNCTIONS)
    runs = tmp_path / "runs"
    runs.mkdir()
    print(f"\npreemption: {LAUNCHES} function launches, seed {SEED}")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(program), json.dumps(plan), str(runs)],
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and len(results) == LAUNCHES, done.stderr[-3000:]
    counts: dict[str, int] = {}
    for result, (name, delay, save_s, fail_step) in zip(results, plan, strict=True):
        out = runs / str(result["i"])
        what = (
            f"launch {result['i']} ({name} after {delay:.2f} s, save {save_s:.1f} s, "
            f"failure at step {fail_step}): {result}"
        )
        _attempt, step = _check_checkpoints(out, what)
        if name == "SIGUSR1":
            assert result["outcome"] == "returned", what
            assert set(result["values"].values()) == {step}, what
        else:
            assert result["outcome"] == "stopped", what
            assert result["signal"] == getattr(signal, name), what
            assert result["killed"] == [], what
            # the stop may come just as the injected failure does, before any restart: then
            # that rank fails on its own during the grace, and its peers' collective with it
            failing = (out / "failed").exists() and not any(out.glob("pid-1-*"))
            endings = (0, -signal.SIGTERM, 1) if failing else (0, -signal.SIGTERM)
            assert all(code in endings for code in result["exits"].values()), what
            assert set(result["values"].values()) <= {step}, what  # the saved step, if any
        assert_gone(_pids(out), 5)
        kind = "saved" if step is not None else "stopped before a step"
        counts[f"{name} {kind}"] = counts.get(f"{name} {kind}", 0) + 1
    took = time.monotonic() - started
    print(f"preemption: {LAUNCHES} launches in {took:.0f} s, 0 lost checkpoints: {counts}")


@pytest.mark.timeout(900)
def test_scripts_preempted_at_random_moments_keep_every_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    plan = _plan(rng, SCRIPT_LAUNCHES)
    script = write(tmp_path, "train.py", SCRIPT)
    print(f"\npreemption: {SCRIPT_LAUNCHES} script launches, seed {SEED + 1}")
    for i, (name, delay, save_s, fail_step) in enumerate(plan):
        out = tmp_path / str(i)
        out.mkdir()
        argv = icelaunch("--devices", "cpu:0-3", "--max-restarts", "1")
        argv += [str(script), str(out), str(save_s), str(fail_step)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (out / "up").exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.005)
            time.sleep(delay)
            proc.send_signal(getattr(signal, name))
            log, _ = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        what = (
            f"script launch {i} ({name} after {delay:.2f} s, save {save_s:.1f} s, "
            f"failure at step {fail_step}): exit {proc.returncode}\n{log[-3000:]}"
        )
        _check_checkpoints(out, what)
        expected = 0 if name == "SIGUSR1" else 128 + getattr(signal, name)
        assert proc.returncode == expected, what
        assert "killed (SIGKILL)" not in log, what
        assert_gone(_pids(out), 5)
