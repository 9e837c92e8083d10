"""The warm fork server seen from a process of its own: it ends with that process, and
``warm_up()`` ahead of torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)


SCRIPT = """
import sys
from icelaunch import ElasticLauncher

def worker(launcher):
    return launcher.rank

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    print(launcher(worker, launcher), flush=True)
"""


def test_fork_server_ends_with_its_process(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    servers: set[int] = set()
    try:
        while proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                        servers.add(child.pid)
                except psutil.Error:
                    pass
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "{0: 0, 1: 1}" in out
    assert servers, "the launch did not use the fork server"
    _, alive = psutil.wait_procs([psutil.Process(p) for p in servers if psutil.pid_exists(p)], 5)
    assert not alive, f"fork server outlived its process: {alive}"


WARM_UP_SCRIPT = """
import sys
import icelaunch

if __name__ == "__main__":
    icelaunch.warm_up()
    assert "torch" not in sys.modules  # the server imports it, not us
    from icelaunch import ElasticLauncher

    def worker(launcher):
        return launcher.world_size

    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    print(launcher(worker, launcher), flush=True)
"""


def test_warm_up_ahead_of_torch(tmp_path: Path) -> None:
    script = tmp_path / "early.py"
    script.write_text(textwrap.dedent(WARM_UP_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "{0: 2, 1: 2}" in proc.stdout
