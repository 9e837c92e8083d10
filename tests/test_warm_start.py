"""The warm fork server behind start_method="spawn": fast, and still spawn's guarantees."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest
import torch

from icelaunch import ElasticLauncher

pytestmark = pytest.mark.timeout(120)


def describe(launcher: ElasticLauncher, module_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    return {
        "value": module.VALUE,
        "env": os.environ.get("ICELAUNCH_TEST_FLAG"),
        "cwd": os.getcwd(),
        "cuda_initialized": torch.cuda.is_initialized(),
        "threads": len([t for t in threading.enumerate() if not t.name.startswith("icelaunch")]),
    }


def test_workers_see_current_environment_cwd_and_module_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "user_module_for_warm_test.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    first = launcher(describe, launcher, module.stem)
    assert {r["value"] for r in first.values()} == {1}

    # Between launches the user edits the module and the environment and moves:
    # workers must see all of it, as freshly spawned ones would.
    module.write_text("VALUE = 2\n")
    monkeypatch.setenv("ICELAUNCH_TEST_FLAG", "changed")
    monkeypatch.chdir(tmp_path)
    second = launcher(describe, launcher, module.stem)
    for info in second.values():
        assert info["value"] == 2
        assert info["env"] == "changed"
        assert info["cwd"] == str(tmp_path)
        assert info["cuda_initialized"] is False
        assert info["threads"] == 1  # none of the launcher's threads


def test_cold_start_still_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cold_module_for_warm_test.py").write_text("VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    launcher = ElasticLauncher("cpu:0-1", warm_start=False, monitor_interval=0.5).freeze()
    results = launcher(describe, launcher, "cold_module_for_warm_test")
    assert [r["value"] for r in results.values()] == [3, 3]


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
