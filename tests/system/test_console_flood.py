"""Eight ranks flooding a terminal with no line end, all at once: the console stays live.

A launcher runs under a real raw pseudo-terminal (Python's ``pty``); its 8 ranks wait
for each other, then each writes a few MiB with no line end to its own terminal and
notes (CLOCK_MONOTONIC, shared by every process) when its last write returned. The
test timestamps every read of the terminal. Live means: by the time a rank's last
write returns, most of what it wrote is already on the screen (the relay holds only
a little per stream, so a rank cannot run far ahead of the screen; before, the
relay held every byte until the ranks stopped writing, or behind one rank that
owned the screen). Then every byte is there, in chunks of one rank each, each with
its prefix, in order.
"""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import run_in_pty

RANKS = 8
SIZE = 2 << 20  # bytes each rank writes, per launch
LAUNCHES = 3  # launches in one process (a warm fork server: quick to repeat)
RUN_TIMEOUT_S = 240
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

JOB = f"""
import os, sys, time
import torch.distributed as dist
from icelaunch import ElasticLauncher

SIZE = {SIZE}

def stream(rank):
    one = bytes([ord("a") + rank]) + b"0123456789"
    return (one * (SIZE // len(one) + 1))[:SIZE]

def flood(launcher, folder, launch):
    dist.barrier()  # every rank starts writing at once
    data = memoryview(stream(launcher.rank))
    while data:
        data = data[os.write(1, data[: 1 << 16]) :]
    done = time.monotonic()
    with open(os.path.join(folder, f"done.{{launch}}.{{launcher.rank}}"), "w") as fh:
        fh.write(repr(done))
    return launcher.rank

if __name__ == "__main__":
    launcher = ElasticLauncher(
        "cpu:0-{RANKS - 1}", monitor_interval=0.5, max_restarts=1  # gloo set-up: see test_console
    ).freeze()
    for launch in range({LAUNCHES}):
        print(f"LAUNCH {{launch}}", flush=True)
        assert launcher(flood, launcher, sys.argv[1], launch) == {{r: r for r in range({RANKS})}}
    print("END", flush=True)
"""


def _stream(rank: int) -> bytes:
    one = bytes([ord("a") + rank]) + b"0123456789"
    return (one * (SIZE // len(one) + 1))[:SIZE]


def _seen_by(marks: list[tuple[float, int]], moment: float) -> int:
    """How many bytes the terminal had given us by ``moment``."""
    return max((n for t, n in marks if t <= moment), default=0)


def _check_launch(
    out: bytes, start: int, end: int, done: dict[int, float], marks: list[tuple[float, int]]
) -> str:
    """Check one launch's output (``out[start:end]``); a line of what was seen when."""
    by_rank: dict[int, list[bytes]] = {r: [] for r in range(RANKS)}
    placed: dict[int, list[tuple[int, int]]] = {r: [] for r in range(RANKS)}  # (offset, size)
    offset = start
    for line in out[start:end].split(b"\n"):
        match = re.fullmatch(rb"\[rank(\d)\]: ([a-h0-9]+)", line)
        if match is not None:  # else the launcher's own lines, a warning
            rank = int(match[1])
            assert set(match[2]) - set(b"0123456789") == {ord("a") + rank}, line[:100]
            by_rank[rank].append(match[2])
            placed[rank].append((offset + match.start(2), len(match[2])))
        offset += len(line) + 1
    fractions = []
    for rank in range(RANKS):
        assert b"".join(by_rank[rank]) == _stream(rank), f"rank {rank}: bytes lost or reordered"
        seen = _seen_by(marks, done[rank])
        before = sum(min(size, max(0, seen - at)) for at, size in placed[rank])
        fractions.append(before / SIZE)
    assert min(fractions) >= 0.5, f"shown when each rank's last write returned: {fractions}"
    chunks = sum(len(v) for v in by_rank.values())
    return f"{chunks} chunks; shown at each rank's last write: {[f'{f:.2f}' for f in fractions]}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_eight_ranks_flooding_without_line_ends_stay_live(tmp_path: Path) -> None:
    job = tmp_path / "flood.py"
    job.write_text(textwrap.dedent(JOB))
    argv = [sys.executable, str(job), str(tmp_path)]
    code, out, marks = run_in_pty(argv, tmp_path, ENV, RUN_TIMEOUT_S)
    assert code == 0, out[-3000:]
    assert out.endswith(b"END\n"), out[-3000:]
    starts = [out.index(f"LAUNCH {i}\n".encode()) for i in range(LAUNCHES)] + [len(out)]
    for launch in range(LAUNCHES):
        done = {
            rank: float((tmp_path / f"done.{launch}.{rank}").read_text()) for rank in range(RANKS)
        }
        print(
            f"launch {launch + 1}/{LAUNCHES}:",
            _check_launch(out, starts[launch], starts[launch + 1], done, marks),
        )
