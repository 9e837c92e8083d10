"""The stop path of launches from the test process: a stubborn peer, and no process a
worker started left behind."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import icelaunch
from helpers import grandchildren, is_running
from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


# --- a stubborn peer: 3 s, not torch's 30 s ----------------------------------------------


def stubborn_peer(launcher: ElasticLauncher, stamp: str) -> None:
    if launcher.rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        ctypes.CDLL(None).sleep(300)  # in C: no Python signal handling either
    time.sleep(1)
    Path(stamp).write_text(str(time.time()))
    raise ValueError("rank 1 fails")


def test_a_peer_ignoring_sigterm_delays_a_failure_by_the_grace_period_only(
    tmp_path: Path,
) -> None:
    stamp = tmp_path / "failed_at"
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(stubborn_peer, launcher, str(stamp))
    took = time.time() - float(stamp.read_text())
    print(f"\nstubborn peer: failure -> raise {took:.2f} s")
    assert info.value.first.rank == 1
    assert took < 20  # torch's path waits 30 s; ours 3 s (plus a loaded machine)


# --- grandchildren -------------------------------------------------------------------------


def _spawn_grandchild(pid_file: str, new_session: bool) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=new_session
    )
    Path(pid_file).write_text(str(child.pid))
    return child


def parent_of_grandchildren(launcher: ElasticLauncher, tmp: str, how: str) -> int:
    _spawn_grandchild(os.path.join(tmp, f"same-{launcher.rank}"), new_session=False)
    _spawn_grandchild(os.path.join(tmp, f"setsid-{launcher.rank}"), new_session=True)
    Path(tmp, f"ready-{launcher.rank}").write_text("")
    if how == "success":
        return 0
    if launcher.rank == 1:
        while len(list(Path(tmp).glob("ready-*"))) < 2:
            time.sleep(0.05)
        if how == "raise":
            raise RuntimeError("rank 1 fails")
        os.kill(os.getpid(), signal.SIGKILL)  # its children are orphaned at once
    time.sleep(300)
    return 0


@pytest.mark.parametrize("how", ["raise", "SIGKILL", "success"])
def test_no_process_started_by_a_worker_outlives_the_launch(tmp_path: Path, how: str) -> None:
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    if how == "success":
        assert launcher(parent_of_grandchildren, launcher, str(tmp_path), how) == {0: 0, 1: 0}
        assert icelaunch.wait_teardown(60)  # a success returns first, then finishes
    else:
        with pytest.raises(WorkerFailedError) as info:
            launcher(parent_of_grandchildren, launcher, str(tmp_path), how)
        assert info.value.first.rank == 1
    pids = grandchildren(tmp_path)
    assert len(pids) == 4
    survivors = [p for p in pids if is_running(p)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"grandchildren {survivors} outlived a launch that ended by {how}"
