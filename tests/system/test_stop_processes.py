"""The stop path with processes of their own: descendants in a new session, and the
``icelaunch`` command leaving nothing its workers started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import grandchildren, is_running
from icelaunch._engine import _stop

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def test_descendants_finds_children_of_a_new_session(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
            "start_new_session=True); time.sleep(60)",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not (found := _stop.descendants({child.pid})) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 1
    finally:
        for pid in _stop.descendants({child.pid}):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


GRANDPARENT_SCRIPT = """
import os, subprocess, sys, time
from pathlib import Path
import icelaunch

rank, tmp = icelaunch.current().rank, sys.argv[1]
for kind, new_session in (("same", False), ("setsid", True)):
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=new_session
    )
    Path(tmp, f"{kind}-{rank}").write_text(str(child.pid))
Path(tmp, f"ready-{rank}").write_text("")
while len(list(Path(tmp).glob("ready-*"))) < 2:
    time.sleep(0.05)
if rank == 1:
    raise SystemExit(5)
time.sleep(300)
"""


def test_no_process_started_by_a_command_worker_outlives_the_command(tmp_path: Path) -> None:
    script = tmp_path / "grandparent.py"
    script.write_text(GRANDPARENT_SCRIPT)
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", str(script), str(pids_dir)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 5, result.stderr[-3000:]
    pids = grandchildren(pids_dir)
    assert len(pids) == 4
    survivors = [p for p in pids if is_running(p)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"grandchildren {survivors} outlived the command"
