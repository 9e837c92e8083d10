"""Shared memory across processes of their own: a receiver in another interpreter, and
nothing left in ``/dev/shm`` after Ctrl-C, ``kill -9`` or a whole launcher tree killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_gone, ours_in_dev_shm
from icelaunch import ElasticLauncher, _transfer

pytestmark = pytest.mark.timeout(180)
FAST = {"monitor_interval": 0.5}
MB = 1 << 20


def test_receive_in_another_process_while_the_sender_lives(tmp_path: Path) -> None:
    t = torch.arange(MB, dtype=torch.float64)
    sent = _transfer.send({"t": t, "a": np.arange(MB)})
    (tmp_path / "payload").write_bytes(sent.payload)
    code = (
        "import sys, pickle; from icelaunch import _transfer; "
        f"d = _transfer.receive(open({str(tmp_path / 'payload')!r}, 'rb').read()); "
        "d['t'][0] = -1.0; print(float(d['t'].sum()), int(d['a'].sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(float(t.sum())), str(int(np.arange(MB).sum()))]
    assert t[0] == -1.0  # the other process wrote into the caller's tensor
    sent.close()


def pid_of(launcher: ElasticLauncher, t: torch.Tensor) -> int:
    return os.getpid()


DRIVER = """
import os, sys, time
from pathlib import Path
import numpy as np, torch
from icelaunch import ElasticLauncher

def worker(launcher, t, arr, pid_dir):
    Path(pid_dir, str(os.getpid())).write_text("")
    time.sleep(600)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    Path(sys.argv[1], str(os.getpid())).write_text("")
    try:
        launcher(worker, launcher, torch.ones(1 << 22), np.ones(1 << 20), sys.argv[1])
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
"""


def _start_driver(
    tmp_path: Path, new_session: bool = False
) -> tuple[subprocess.Popen[str], set[int]]:
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(pid_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 120
    while len(list(pid_dir.iterdir())) < 3:  # the driver and its two workers
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    return proc, {int(p.name) for p in pid_dir.iterdir()}


def test_nothing_left_after_ctrl_c(tmp_path: Path) -> None:
    proc, pids = _start_driver(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "KeyboardInterrupt" in out, out
    assert_gone(pids, 30)
    assert ours_in_dev_shm(pids) == []


def test_nothing_left_after_kill_9_and_the_next_launch_works(tmp_path: Path) -> None:
    proc, pids = _start_driver(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert_gone(pids, 30)
    assert ours_in_dev_shm(pids) == []  # nothing named: nothing for a next launch to clean
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert set(launcher(pid_of, launcher, torch.ones(2 * MB))) == {0, 1}


def _semaphores() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("sem.mp-")}


def test_no_semaphore_left_when_the_whole_launcher_tree_is_killed(tmp_path: Path) -> None:
    """kill -9 of the launcher with its resource tracker and fork server (a node lost):
    multiprocessing's named semaphores of torch's queues are unlinked once the
    workers run, so none remains in /dev/shm."""
    before = _semaphores()
    proc, pids = _start_driver(tmp_path, new_session=True)
    time.sleep(0.5)  # the workers have reported that they run (they wrote their pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's group: driver, tracker, fork server
    proc.communicate(timeout=60)
    assert_gone(pids, 30)
    assert _semaphores() - before == set()
