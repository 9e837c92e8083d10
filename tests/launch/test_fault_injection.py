"""Seeded fault injection: a random rank dies in a random way at a random moment.

Every launch must name that rank first, with its true exit status or signal, and
leave no process behind. The seed is printed; replay one with
``ICELAUNCH_FAULT_SEED=<seed>``, run more with ``ICELAUNCH_FAULT_LAUNCHES=<n>``.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from dataclasses import dataclass

import psutil
import pytest
import torch
import torch.distributed as dist

from helpers import is_mp_helper
from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

LAUNCHES = int(os.environ.get("ICELAUNCH_FAULT_LAUNCHES", "30"))
WORLD = 3
DEATHS = ("raise", "sys.exit(7)", "os._exit(0)", "SIGKILL", "SIGSEGV")
MOMENTS = ("before", "inside", "after")


@dataclass(frozen=True)
class Fault:
    victim: int
    death: str
    moment: str
    delay_s: float


def _die(death: str) -> None:
    if death == "raise":
        raise RuntimeError("injected fault")
    if death == "sys.exit(7)":
        sys.exit(7)
    if death == "os._exit(0)":
        os._exit(0)
    os.kill(os.getpid(), getattr(signal, death))
    time.sleep(60)  # the signal is delivered before this returns


def faulty(launcher: ElasticLauncher, fault: Fault) -> int:
    """Every rank: collectives; the victim dies before, during or after one of them."""
    me = launcher.rank == fault.victim
    time.sleep(fault.delay_s)
    if me and fault.moment == "before":
        _die(fault.death)
    if me and fault.moment == "inside":
        time.sleep(fault.delay_s)  # the others are inside all_reduce by now (or soon)
        _die(fault.death)
    dist.all_reduce(torch.ones(1))
    if me:  # "after"
        _die(fault.death)
    dist.all_reduce(torch.ones(1))  # the peers wait here for the victim
    return 0


def _expected(death: str) -> tuple[int, str | None]:
    return {
        "raise": (1, None),
        "sys.exit(7)": (7, None),
        "os._exit(0)": (0, None),
        "SIGKILL": (-9, "SIGKILL"),
        "SIGSEGV": (-11, "SIGSEGV"),
    }[death]


def _misreport(fault: Fault, err: WorkerFailedError) -> str | None:
    first = err.first
    code, signal_name = _expected(fault.death)
    if first.rank != fault.victim:
        return f"first is rank {first.rank}: {[d.summary() for d in err.details.values()]}"
    if (first.exitcode, first.signal_name) != (code, signal_name):
        return f"status {first.exitcode}/{first.signal_name}: {first.summary()}"
    if fault.death == "raise" and first.exc_type != "builtins.RuntimeError":
        return f"exception {first.exc_type}"
    return None


def _leftovers() -> list[psutil.Process]:
    """Processes started by this test process that are still running (helpers aside)."""
    deadline = time.monotonic() + 10
    while True:
        alive = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if not is_mp_helper(proc) and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_root_cause_and_true_status_under_random_faults() -> None:
    seed = int(os.environ.get("ICELAUNCH_FAULT_SEED", random.randrange(2**32)))
    print(f"\nfault-injection seed {seed} ({LAUNCHES} launches)")
    rng = random.Random(seed)
    launcher = ElasticLauncher(f"cpu:0-{WORLD - 1}", monitor_interval=0.5).freeze()
    wrong: list[str] = []
    for i in range(LAUNCHES):
        fault = Fault(
            rng.randrange(WORLD), rng.choice(DEATHS), rng.choice(MOMENTS), rng.uniform(0, 0.05)
        )
        with pytest.raises(WorkerFailedError) as info:
            launcher(faulty, launcher, fault)
        problem = _misreport(fault, info.value)
        if problem:
            wrong.append(f"launch {i} {fault}: {problem}")
        left = _leftovers()
        for proc in left:
            proc.kill()
        assert not left, f"launch {i} {fault} left {left} (seed {seed})"
    print(f"{LAUNCHES} launches, {len(wrong)} misreported")
    assert not wrong, f"seed {seed}:\n" + "\n".join(wrong)
