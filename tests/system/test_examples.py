"""The examples run as users run them: a real interpreter, real workers, nothing left behind."""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from helpers import is_mp_helper

ROOT = Path(__file__).resolve().parents[2]
TRAIN_MLP = ROOT / "examples" / "train_mlp.py"
RUN_TIMEOUT_S = 120
GRACE_S = 5.0

EPOCH_LINE = re.compile(
    r"^\[rank(\d+)\]: epoch (\d+)/(\d+)\s+loss ([0-9.]+)\s+([0-9,]+) samples/s", re.MULTILINE
)
SUMMARY_LINE = re.compile(
    r"^done: (\d+) workers .* held-out accuracy ([0-9.]+)% \(chance (\d+)%\), ([0-9,]+) samples/s",
    re.MULTILINE,
)


def _run_watching_descendants(
    argv: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], list[psutil.Process]]:
    """Run ``argv``; also return every descendant process seen while it ran.

    Output goes to a file, not a pipe, so a leaked process holding it open cannot
    stall the wait: the leak is reported by the caller instead.
    """
    seen: dict[int, psutil.Process] = {}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        timed_out = False
        while not timed_out:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                seen.update({p.pid: p for p in _descendants(parent)})
                timed_out = time.monotonic() > deadline
        if timed_out:
            for p in [*seen.values(), parent]:
                _kill(p)
            proc.wait()
        log.seek(0)
        out = log.read()
    if timed_out:
        pytest.fail(f"{argv} ran past {timeout} s; output:\n{out}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, None), list(seen.values())


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _kill(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        proc.kill()


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (``is_running`` also guards against pid reuse)."""
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            pass
    return alive


def _survivors(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Our own children and ``procs`` still alive after a grace period of ``GRACE_S``."""
    deadline = time.monotonic() + GRACE_S
    while True:
        ours = [p for p in psutil.Process().children(recursive=True) if not is_mp_helper(p)]
        survivors = _alive([*ours, *procs])
        if not survivors or time.monotonic() > deadline:
            return survivors
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_train_mlp_learns_and_leaves_no_process() -> None:
    argv = [sys.executable, str(TRAIN_MLP), "--devices", "cpu:0-3", "--epochs", "2"]
    result, descendants = _run_watching_descendants(argv, RUN_TIMEOUT_S)
    out = result.stdout
    assert result.returncode == 0, out

    epochs = [
        (int(rank), int(epoch), int(total), float(loss), float(rate.replace(",", "")))
        for rank, epoch, total, loss, rate in EPOCH_LINE.findall(out)
    ]
    assert [(rank, epoch, total) for rank, epoch, total, _, _ in epochs] == [
        (0, 1, 2),
        (0, 2, 2),
    ], out  # once per epoch, from rank 0 only
    losses = [loss for _, _, _, loss, _ in epochs]
    assert all(math.isfinite(loss) for loss in losses), out
    assert losses[1] < losses[0], out
    assert all(rate > 0 for *_, rate in epochs), out

    summary = SUMMARY_LINE.search(out)
    assert summary is not None, out
    workers, accuracy, chance, rate = summary.groups()
    assert int(workers) == 4, out
    assert float(accuracy) >= max(80.0, 3 * int(chance)), out
    assert float(rate.replace(",", "")) > 0, out

    assert len(descendants) >= 4, f"expected to see the 4 workers, saw {descendants}"
    survivors = _survivors(descendants)
    for p in survivors:
        _kill(p)
    assert not survivors, f"processes survived the example: {survivors}"
