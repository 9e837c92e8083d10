"""Ctrl-C in every phase: a static multi-node rendezvous waiting for a node that never
comes, and a caller that ignores SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from icelaunch._ports import free_port

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
