"""Signals to a launcher process, kill -9, and a hundred launches in a fresh process:
nothing hangs, nothing is left running.

Latencies are recorded (``-s`` shows them) but asserted only against generous
bounds that torch's own behaviour (hang forever, 30 s shutdown timeout) breaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from icelaunch import ElasticLauncher

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


LAUNCHER_SCRIPT = """
import os, signal, sys, time
from pathlib import Path
from icelaunch import ElasticLauncher, LaunchStopped

def worker(launcher, pid_dir, stubborn):
    if stubborn:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(pid_dir, str(os.getpid())).write_text("")
    time.sleep(600)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5, shutdown_timeout=2).freeze()
    try:
        launcher(worker, launcher, sys.argv[1], sys.argv[2] == "stubborn")
    except LaunchStopped as stop:
        print(f"stopped: {stop}", flush=True)
        if isinstance(stop, KeyboardInterrupt):
            print("KeyboardInterrupt raised in the caller", flush=True)
            sys.exit(130)
        raise
"""


def _start_launcher(tmp_path: Path, stubborn: bool) -> tuple[subprocess.Popen[str], list[int]]:
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(LAUNCHER_SCRIPT))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    mode = "stubborn" if stubborn else "plain"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pid_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while len(list(pid_dir.iterdir())) < 2:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    time.sleep(0.2)  # let the stubborn workers install their handlers
    return proc, [int(p.name) for p in pid_dir.iterdir()]


def _gone_within(pids: list[int], seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        alive = [p for p in pids if psutil.pid_exists(p) and not _zombie(p)]
        if not alive:
            return time.monotonic() - start
        time.sleep(0.02)
    for pid in pids:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"workers {pids} outlived the launcher by {seconds} s")


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


@pytest.mark.parametrize("stubborn", [False, True], ids=["plain", "stubborn"])
def test_sigint_stops_workers_and_raises_keyboard_interrupt(tmp_path: Path, stubborn: bool) -> None:
    proc, pids = _start_launcher(tmp_path, stubborn)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "KeyboardInterrupt raised in the caller" in out
    print(f"\nSIGINT ({'stubborn' if stubborn else 'plain'}): workers gone after the launcher")
    _gone_within(pids, 5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_workers_then_exit_with_128_plus_the_signal(
    tmp_path: Path, sig: int
) -> None:
    """Stubborn ranks (SIGTERM ignored) are killed when shutdown_timeout (2 s) runs out and
    named; an uncaught LaunchStopped ends the program with 128 + the signal."""
    proc, pids = _start_launcher(tmp_path, stubborn=True)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out
    assert f"stopped by {signal.Signals(sig).name}" in out
    assert "ranks 0, 1 still running at the end of the grace, killed (SIGKILL)" in out
    _gone_within(pids, 5)


def test_kill_9_of_launcher_leaves_no_stubborn_worker(tmp_path: Path) -> None:
    proc, pids = _start_launcher(tmp_path, stubborn=True)
    proc.kill()
    proc.communicate(timeout=30)
    took = _gone_within(pids, 2.0)
    print(f"\nkill -9: stubborn workers gone {took:.2f} s after the launcher")
    # its job folder could not be removed by it; the next launch anywhere removes it
    orphans = [
        n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"icelaunch_{proc.pid}_")
    ]
    assert orphans
    launcher = ElasticLauncher("cpu", monitor_interval=0.5).freeze()
    launcher(succeed, launcher)
    assert not [n for n in orphans if os.path.exists(os.path.join(tempfile.gettempdir(), n))]


def succeed(launcher: ElasticLauncher) -> int:
    return int(launcher.rank)


LEAK_SCRIPT = """
import json, os, tempfile, threading
import psutil
import icelaunch
from icelaunch import ElasticLauncher

def succeed(launcher):
    return int(launcher.rank)

def snapshot():
    assert icelaunch.wait_teardown(60)  # a success returns first, then finishes
    me = psutil.Process()
    helpers = ("resource_tracker", "forkserver")
    children = [p for p in me.children(recursive=True)
                if not any(h in " ".join(p.cmdline()) for h in helpers)]
    return [len(children), me.num_fds(), threading.active_count(),
            len(os.listdir(tempfile.gettempdir()))]

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu", monitor_interval=0.5).freeze()
    launcher(succeed, launcher)  # warm-up: lazy imports, the fork server, mp's temp folder
    before = snapshot()
    for _ in range(100):
        assert launcher(succeed, launcher) == {0: 0}
    print(json.dumps({"before": before, "after": snapshot()}))
"""


def test_hundred_sequential_launches_leak_nothing(tmp_path: Path) -> None:
    """In a fresh process, so that nothing else running in the test process counts."""
    import json

    script = tmp_path / "hundred.py"
    script.write_text(LEAK_SCRIPT)
    temp = tmp_path / "tmp"
    temp.mkdir()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=170,
        env={**os.environ, "TMPDIR": str(temp)},
        check=False,
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n100 launches: {took:.1f} s; children/fds/threads/temp entries {found}")
    assert found["after"] == found["before"]
