"""Ctrl-C in every phase: a static multi-node rendezvous waiting for a node that never
comes, and a caller that ignores SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from icelaunch._engine._ports import free_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

RDZV_TIMEOUT_S = 90  # torch would answer Ctrl-C only when this runs out

WAITING_NODE = """
import sys, time
from pathlib import Path
from icelaunch import ElasticLauncher

def work():
    return 0

if __name__ == "__main__":
    node_rank, port, stamp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    launcher = ElasticLauncher(
        "cpu:0-1", nnodes="2", node_rank=node_rank, master_port=port,
        rdzv_configs="timeout={timeout}",
    ).freeze()
    Path(stamp).write_text("")
    try:
        launcher(work)
    except KeyboardInterrupt:
        print(f"KeyboardInterrupt at {{time.time()}}", flush=True)
        sys.exit(130)
"""


@pytest.mark.parametrize("node_rank", [0, 1])
def test_ctrl_c_during_a_static_multi_node_rendezvous(tmp_path: Path, node_rank: int) -> None:
    script = tmp_path / "node.py"
    script.write_text(textwrap.dedent(WAITING_NODE.format(timeout=RDZV_TIMEOUT_S)))
    stamp = tmp_path / "launching"
    argv = [sys.executable, str(script), str(node_rank), str(free_port()), str(stamp)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not stamp.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        time.sleep(2)  # now inside the rendezvous, waiting for the other node
        assert proc.poll() is None
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        exited = time.time() - sent
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, out
    assert "KeyboardInterrupt at " in out
    took = float(out.split("KeyboardInterrupt at ")[1].split()[0]) - sent
    print(f"\nstatic rendezvous, node {node_rank}: KeyboardInterrupt {took:.2f} s after Ctrl-C")
    print(f"(the process exited {exited:.2f} s after it)")
    assert took < RDZV_TIMEOUT_S / 3  # about 0.5 s; torch waits for the whole timeout


IGNORING_CALLER = """
import os, signal, sys, time
from pathlib import Path
from icelaunch import ElasticLauncher

def work(stamp):
    Path(stamp).write_text("")
    time.sleep(3)
    return 7

if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. a job started in the background
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    print(launcher(work, sys.argv[1]), flush=True)
"""


def test_a_caller_that_ignores_sigint_keeps_ignoring_it(tmp_path: Path) -> None:
    script = tmp_path / "ignoring.py"
    script.write_text(textwrap.dedent(IGNORING_CALLER))
    stamp = tmp_path / "working"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(stamp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not stamp.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert "{0: 7, 1: 7}" in out


EARLY = """
import sys, time
from pathlib import Path
from icelaunch import ElasticLauncher

def work():
    return 0

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    Path(sys.argv[1]).write_text("")
    try:
        launcher(work)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
    print("finished", flush=True)
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.2, 0.5, 1.0, 2.0])
def test_ctrl_c_early_in_a_launch_prints_no_traceback(tmp_path: Path, delay_s: float) -> None:
    """Ctrl-C at the terminal reaches the whole process group: the launcher and the
    fork server it is starting (importing torch), or workers it is starting."""
    script = tmp_path / "early.py"
    script.write_text(textwrap.dedent(EARLY))
    stamp = tmp_path / "launching"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(stamp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 60
        while not stamp.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.01)
        time.sleep(delay_s)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in out, out
    assert proc.returncode == 130 or "finished" in out, out


# Ctrl-C at a set moment of torch's import: when torch's C++ initialisers import numpy.
# A KeyboardInterrupt raised there is swallowed (torch goes on without numpy) or, in
# other C++ initialisers (torch._C._autograd_init), aborts the process with SIGABRT.
DURING_TORCH_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlCOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

def work():
    return 0

if __name__ == "__main__":
    assert "torch" not in sys.modules and "numpy" not in sys.modules
    sys.meta_path.insert(0, CtrlCOnImport())
    if sys.argv[1] == "command":
        from icelaunch.cli import main
        code = main(["--devices", "auto", sys.argv[2]])  # parsing imports torch
    else:
        from icelaunch import ElasticLauncher
        launcher = ElasticLauncher("cpu:0-1").freeze()
        try:
            launcher(work)  # the engine imports torch
            code = 0
        except KeyboardInterrupt:
            code = 130
    import torch
    print("torch has numpy:", torch.zeros(1).numpy().shape == (1,), flush=True)
    sys.exit(code)
"""


@pytest.mark.parametrize("door", ["function", "command"])
def test_ctrl_c_while_a_launch_imports_torch_is_raised_after_it(tmp_path: Path, door: str) -> None:
    script = tmp_path / "importing.py"
    script.write_text(textwrap.dedent(DURING_TORCH_IMPORT))
    rank = tmp_path / "rank.py"
    rank.write_text("print('the rank ran', flush=True)\n")
    result = subprocess.run(
        [sys.executable, str(script), door, str(rank)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 130, out
    assert "the rank ran" not in out
    assert "torch has numpy: True" in out
    assert "Traceback" not in out, out


FORK_SERVER_MASK = """
import multiprocessing.forkserver
from icelaunch._engine import _forkserver

_forkserver.warm_up()
pid = multiprocessing.forkserver._forkserver._forkserver_pid
with open(f"/proc/{pid}/status") as fh:
    masks = dict(line.split(":") for line in fh if line.startswith(("SigBlk", "SigIgn")))
print(int(masks["SigBlk"], 16) | int(masks["SigIgn"], 16))
"""


def test_the_fork_server_never_takes_sigint_while_it_imports_torch() -> None:
    """Blocked while it starts (then ignored, by multiprocessing): a Ctrl-C at the
    terminal during start-up gives no traceback from it."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_SERVER_MASK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) & (1 << (signal.SIGINT - 1))
