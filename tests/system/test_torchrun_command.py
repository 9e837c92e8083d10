"""torchrun's options under the ``icelaunch`` command, launched for real."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("")
    return path


SIGNAL_SCRIPT = """
import os, signal, sys, threading
def on_winch(signum, frame):
    open(os.path.join(sys.argv[1], "winch-" + os.environ["RANK"]), "w").close()
    os._exit(0)
signal.signal(signal.SIGWINCH, on_winch)
print("ready", flush=True)
threading.Event().wait(60)
"""


@pytest.mark.timeout(90)
def test_signals_to_handle_are_passed_on_and_the_launch_goes_on(tmp_path: Path) -> None:
    """A chosen signal that is no stop (SIGWINCH: ignored by default) reaches every rank;
    the ranks decide (here: they exit 0), and so the launch succeeds."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "wait.py"
    script.write_text(SIGNAL_SCRIPT)
    out = tmp_path / "out.txt"
    argv = [sys.executable, "-m", "icelaunch", "--nproc-per-node", "2"]
    argv += ["--signals-to-handle", "SIGTERM,SIGWINCH", str(script), str(tmp_path)]
    with out.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while out.read_text().count("ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGWINCH)
    code = proc.wait(timeout=60)
    assert code == 0, out.read_text()[-2000:]
    assert sorted(p.name for p in tmp_path.glob("winch-*")) == ["winch-0", "winch-1"]
    assert "SIGWINCH passed on to ranks 0, 1" in out.read_text()
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:
        p.kill()
    assert not alive


@pytest.mark.timeout(90)
def test_pet_nproc_per_node_starts_that_many_workers(tmp_path: Path) -> None:
    import os

    from helpers import icelaunch, launch, write

    path = write(tmp_path, "hello.py", "import os\nprint('hello', os.environ['RANK'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    result = launch(icelaunch(str(path)), env={**env, "PET_NPROC_PER_NODE": "2"})
    assert result.returncode == 0, result.stderr
    assert "[rank0]: hello 0" in result.stdout and "[rank1]: hello 1" in result.stdout
