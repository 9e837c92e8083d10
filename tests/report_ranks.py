"""What the ranks of ``tests/launch/test_run_report.py`` run.

A module of its own, importing only the standard library, torch and icelaunch:
every rank imports the module its function comes from, and a test module (pytest,
numpy, jsonschema) costs each rank seconds of start-up on a busy machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher

WAIT_LIMIT_S = 60


def here(folder: str, rank: int) -> None:
    """Tell the test "this rank runs" (and its pid)."""
    Path(folder, f"{rank}.pid").write_text(str(os.getpid()))


def returns_rank(launcher: ElasticLauncher) -> int:
    return int(launcher.rank)


def works_a_little(launcher: ElasticLauncher) -> int:
    """Some CPU, then long enough alive to be sampled (every 0.5 s)."""
    sum(i * i for i in range(200_000))
    time.sleep(1.2)
    return int(launcher.rank)


def rank_one_raises(launcher: ElasticLauncher, folder: str) -> None:
    """Rank 1 raises once rank 0 runs; rank 0 sleeps until it is stopped."""
    here(folder, launcher.rank)
    if launcher.rank == 1:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while not Path(folder, "0.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        raise ValueError("rank 1 gives up")
    time.sleep(WAIT_LIMIT_S)


def rank_one_raises_in_the_first_attempt(launcher: ElasticLauncher) -> int:
    if launcher.restart_count == 0:
        if launcher.rank == 1:
            raise ValueError("the first attempt fails")
        time.sleep(WAIT_LIMIT_S)
    return int(launcher.rank)


def peer_in_all_reduce(launcher: ElasticLauncher) -> None:
    """Rank 0's all_reduce fails of rank 1's end, while the others settle."""
    if launcher.rank == 1:
        raise ValueError("rank 1 gives up")
    dist.all_reduce(torch.ones(1))


def sleeps_past_the_limit(launcher: ElasticLauncher, folder: str) -> None:
    here(folder, launcher.rank)
    time.sleep(WAIT_LIMIT_S)


def waits_to_be_killed(launcher: ElasticLauncher, folder: str) -> None:
    here(folder, launcher.rank)
    time.sleep(WAIT_LIMIT_S)
