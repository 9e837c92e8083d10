"""``icelaunch top``: a live view of a real running launch, through a pipe and on a terminal.

A 3-rank launch of a script that loads a batch and all-reduces it, again and
again, until a file appears; its ranks write their pids first, so that every
row can be checked against the real processes and every test can prove that
no rank outlived the launch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from helpers import assert_gone, kill_trees, pid_files, wait_for_pid_files, write

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

RANKS = 3
READ_TIMEOUT_S = 60
JOB = """
import os, sys, time
from pathlib import Path
import torch, torch.distributed as dist
import icelaunch

ctx = icelaunch.init_process_group()
folder = Path(sys.argv[1])
Path(folder, f"{ctx.rank}.tmp").write_text(str(os.getpid()))
os.replace(Path(folder, f"{ctx.rank}.tmp"), Path(folder, f"{ctx.rank}.pid"))

def load_batch():
    time.sleep(0.05)
    return torch.ones(4)

deadline = time.monotonic() + 90  # a bound, should the test never say stop
while True:
    t = load_batch()
    dist.all_reduce(t)
    done = torch.tensor([float(Path(folder, "stop").exists() or time.monotonic() > deadline)])
    dist.all_reduce(done, op=dist.ReduceOp.MAX)  # every rank stops at the same step
    if done.item():
        break
"""
# shutil.get_terminal_size() (and rich) prefer these to the terminal
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+(\d+)\s+(starting|running|waiting|stopped|ended)\s+(\S+)\s")


@dataclass
class Launch:
    proc: subprocess.Popen[bytes]
    folder: Path  # the ranks' pid files; a file "stop" ends the launch
    env: dict[str, str]  # a temp directory of its own: top without a pid sees only this one

    @property
    def ranks(self) -> dict[int, int]:
        """Global rank -> pid, as the ranks wrote them."""
        return {int(p.stem): int(p.read_text()) for p in self.folder.glob("*.pid")}

    def top(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "icelaunch", "top", *args]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    job = write(tmp_path, "job.py", JOB)
    folder, own_tmp = tmp_path / "ranks", tmp_path / "tmp"
    folder.mkdir()
    own_tmp.mkdir()
    env = {**ENV, "TMPDIR": str(own_tmp), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "icelaunch", "--devices", f"cpu:0-{RANKS - 1}", str(job)]
    with open(tmp_path / "launch.log", "wb") as log:
        proc = subprocess.Popen(
            [*argv, str(folder)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env
        )
    try:
        wait_for_pid_files(folder, RANKS)
        yield Launch(proc, folder, env)
    finally:
        (folder / "stop").write_text("")
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            kill_trees([proc.pid])
            code = proc.wait()
        assert_gone(pid_files(folder))
        assert code == 0, (tmp_path / "launch.log").read_text()


def _rows(text: str) -> dict[int, tuple[str, int, str, str, str]]:
    """Rank -> (node, pid, state, cpu%, whole line) of one plain snapshot."""
    rows = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            rows[int(match[1])] = (match[2], int(match[3]), match[4], match[5], line)
    return rows


def _launch_pids(launch: Launch) -> set[int]:
    return {p.pid for p in psutil.Process(launch.proc.pid).children(recursive=True)}


def _read_until(fd: int, text: bytes, count: int, seen: bytearray) -> None:
    """Read ``fd`` into ``seen`` until ``text`` is in it ``count`` times (bounded)."""
    deadline = time.monotonic() + READ_TIMEOUT_S
    while seen.count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not seen in {READ_TIMEOUT_S} s: {seen!r}"
        if select.select([fd], [], [], 1.0)[0]:
            try:
                data = os.read(fd, 1 << 16)
            except OSError:  # EIO: the terminal's other end closed
                data = b""
            assert data, f"the output ended before {count} x {text!r}: {bytes(seen)!r}"
            seen += data


def test_once_and_snapshots_through_a_pipe_show_every_rank(launch: Launch) -> None:
    pid = launch.proc.pid
    once = subprocess.run(
        launch.top(str(pid), "--once"), capture_output=True, text=True, timeout=60, env=launch.env
    )
    assert once.returncode == 0, once.stderr
    assert "\x1b" not in once.stdout  # plain text into a pipe
    rows = _rows(once.stdout)
    assert {rank: row[1] for rank, row in rows.items()} == launch.ranks
    assert set(launch.ranks.values()) <= _launch_pids(launch)
    for node, _, state, cpu, line in rows.values():
        # "starting" only if a rank's stack came too late (a loaded machine)
        assert node in ("0", "-") and state in ("starting", "running", "waiting"), once.stdout
        assert cpu.isdigit() and "MiB" in line, once.stdout  # two looks: a CPU share
    assert f"launch {pid} (" in once.stdout and ", attempt 0, 3 ranks (" in once.stdout
    assert once.stdout.startswith("rank  node") and once.stdout.endswith("\n\n")

    # refreshed every interval, a blank line after each; Ctrl-C ends it quietly
    top = subprocess.Popen(
        launch.top(str(pid), "--interval", "0.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=launch.env,
    )
    assert top.stdout is not None
    seen = bytearray()
    try:
        _read_until(top.stdout.fileno(), b"\n\n", 3, seen)  # three snapshots
    finally:
        top.send_signal(signal.SIGINT)
        out, err = top.communicate(timeout=30)
    snapshots = (bytes(seen) + out).decode().split("\n\n")
    assert top.returncode == 130 and err == b"", err
    where = {rank: set() for rank in launch.ranks}
    for number, snapshot in enumerate(snapshots[:3]):
        rows = _rows(snapshot)
        assert {rank: row[1] for rank, row in rows.items()} == launch.ranks, snapshot
        for rank, (_, _, state, cpu, line) in rows.items():
            assert cpu.isdigit() or number == 0, snapshot  # a share from the second look on
            if state in ("running", "waiting"):
                where[rank].add(line.split("  ")[-1])
    # each rank was seen in the script, in its loop
    assert all(any("job.py:" in w for w in places) for places in where.values()), snapshots


def test_a_terminal_shows_a_table_that_refreshes_until_the_launch_ends(launch: Launch) -> None:
    pid = launch.proc.pid
    master, slave = os.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 200, 0, 0))
    top = subprocess.Popen(
        launch.top(str(pid), "--interval", "0.5"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**launch.env, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(slave)
    seen = bytearray()
    try:
        _read_until(master, f"launch {pid} (".encode(), 3, seen)  # drawn three times
        (launch.folder / "stop").write_text("")  # the launch ends: top exits by itself
        _read_until(master, b"attempt 0: ended", 1, seen)
        code = top.wait(timeout=30)
    finally:
        if top.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(top.pid, signal.SIGKILL)
            top.wait()
        with contextlib.suppress(OSError):
            while select.select([master], [], [], 0.2)[0] and (data := os.read(master, 1 << 16)):
                seen += data
        os.close(master)
    raw = bytes(seen).decode(errors="replace")
    assert code == 0, raw
    assert "Traceback" not in raw
    assert "\x1b[1A\x1b[2K" in raw  # redrawn in place (rich's Live), not printed line by line
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # without colours and cursor moves
    last = text[text.rindex("rank  node") :]  # the last screen, left visible
    for rank, rank_pid in launch.ranks.items():
        assert re.search(rf"\b{rank}\s+\S+\s+{rank_pid}\s+ended\b", last), last
    assert text.count(f"launch {pid} (") >= 4


def test_no_launch_usage_errors_and_a_script_named_top(tmp_path: Path) -> None:
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    (tmp_path / "top").write_text("print('the script named top ran')\n")
    env = {**ENV, "TMPDIR": str(own_tmp)}
    run = [sys.executable, "-m", "icelaunch", "top"]

    def top(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*run, *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
        )

    alone = top()
    assert alone.returncode == 1 and alone.stdout == ""
    note, message = alone.stderr.splitlines()
    assert "to run the script ./top, write `icelaunch ./top`" in note
    assert message == "icelaunch top: no icelaunch launch running on this machine"
    assert top("1", "--once").returncode == 1
    too_fast = top("--interval", "0.1")
    assert too_fast.returncode == 2
    assert "invalid --interval 0.1: must be at least 0.5 seconds" in too_fast.stderr
    assert "--once" in top("--help").stdout
