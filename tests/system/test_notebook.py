"""Launches from a real Jupyter kernel (ipykernel driven by nbclient), as in a notebook.

A worker defined in a cell runs in two CPU workers, its output reaches the
cell with rank prefixes, a second launch takes the warm path, and a kernel
interrupt (Ctrl-C in Jupyter: SIGINT to the kernel's process group) stops the
job, raises KeyboardInterrupt in the cell and leaves no worker behind.
"""

from __future__ import annotations

import ast
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from helpers import SETUP, client, errors, notebook, run

ROOT = Path(__file__).resolve().parents[2]
GLOO_FLAKE = "connectFullMesh"
EXAMPLE = ROOT / "examples" / "notebook.ipynb"
WORKERS_UP_TIMEOUT_S = 60
GONE_TIMEOUT_S = 15

DEFINE = """\
class Score:  # a class of the notebook's own, sent to the workers and back
    def __init__(self, value):
        self.value = value

def work(launcher, base):
    print(f"hello from rank {launcher.rank} of {launcher.world_size}")
    return Score(base.value + launcher.rank)
"""

LAUNCH = """\
results = launcher(work, launcher, Score(10))
{rank: (type(s) is Score, s.value) for rank, s in results.items()}
"""

RELAUNCH = "launcher(lambda l, k: l.rank * k, launcher, 3)"

SLEEPER = """\
def sleeper(launcher, pid_dir, ignore_sigint):
    if ignore_sigint:  # like a rank stuck in native code: only the launcher can stop it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = os.path.join(pid_dir, f"{launcher.rank}.pid")
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(600)
"""

AFTER_INTERRUPT = "launcher(lambda l: l.rank + 100, launcher)"


def _value(cell: Any) -> Any:
    """The cell's result (its last expression), as a Python value."""
    assert not errors(cell), errors(cell)
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, cell.outputs
    return ast.literal_eval(results[0].data["text/plain"])


def _stream_text(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_launch_from_notebook_cells(tmp_path: Path) -> None:
    nb = notebook(SETUP, DEFINE, LAUNCH, RELAUNCH)
    with client(nb, tmp_path) as nb_client:
        for index in range(2):
            assert not errors(run(nb_client, index))
        launched = run(nb_client, 2)
        assert _value(launched) == {0: (True, 10), 1: (True, 11)}
        assert _value(run(nb_client, 3)) == {0: 0, 1: 3}  # warm: the fork server is up
    out = _stream_text(launched)
    assert "[rank0]: hello from rank 0 of 2" in out, out
    assert "[rank1]: hello from rank 1 of 2" in out, out


class _Interrupter(threading.Thread):
    """Interrupts the kernel, as Jupyter's stop button does, once every worker is up."""

    def __init__(self, km: KernelManager, pid_dir: Path, nworkers: int) -> None:
        super().__init__(name="interrupter", daemon=True)
        self.km, self.pid_dir, self.nworkers = km, pid_dir, nworkers
        self.workers: list[psutil.Process] = []

    def run(self) -> None:
        deadline = time.monotonic() + WORKERS_UP_TIMEOUT_S
        while time.monotonic() < deadline and len(self._pid_files()) < self.nworkers:
            time.sleep(0.05)
        with contextlib.suppress(psutil.Error):  # an ended worker fails the test later
            self.workers = [psutil.Process(int(p.read_text())) for p in self._pid_files()]
        self.km.interrupt_kernel()  # also when the workers never came up: unblocks the cell

    def _pid_files(self) -> list[Path]:
        return sorted(self.pid_dir.glob("*.pid"))


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _alive(procs)


def _interrupted_launch(nb_client: NotebookClient, index: int, pid_dir: Path) -> Any:
    """Run cell ``index`` (a launch of sleepers), interrupt it, check the workers are gone."""
    pid_dir.mkdir()
    interrupter = _Interrupter(nb_client.km, pid_dir, nworkers=2)
    interrupter.start()
    try:
        cell = run(nb_client, index)
    finally:
        interrupter.join(WORKERS_UP_TIMEOUT_S + 10)
    assert len(interrupter.workers) == 2, "the workers never wrote their pid files"
    error_outputs = [o for o in cell.outputs if o.output_type == "error"]
    # icelaunch.LaunchStopped, a KeyboardInterrupt for SIGINT
    assert [o.ename for o in error_outputs] == ["LaunchStopped"], errors(cell) or cell.outputs
    assert "stopped by SIGINT" in error_outputs[0].evalue
    leftover = _wait_gone(interrupter.workers, GONE_TIMEOUT_S)
    for proc in leftover:
        proc.kill()
    assert not leftover, f"workers survived the interrupt: {leftover}"
    return cell


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kernel_interrupt_stops_workers(tmp_path: Path) -> None:
    dirs = {flag: tmp_path / f"pids-{flag}" for flag in (False, True)}
    launches = [f"launcher(sleeper, launcher, {str(d)!r}, {flag})" for flag, d in dirs.items()]
    nb = notebook(SETUP, SLEEPER, *launches, AFTER_INTERRUPT)
    with client(nb, tmp_path) as nb_client:
        for index in range(2):
            assert not errors(run(nb_client, index))
        _interrupted_launch(nb_client, 2, dirs[False])  # workers get the SIGINT too
        cell = _interrupted_launch(nb_client, 3, dirs[True])  # workers ignore it: we stop them
        # where they were, printed before KeyboardInterrupt, names the cell's real file
        shown = _stream_text(cell)
        assert "where the running ranks were:" in shown, cell.outputs
        assert "ranks 0-1: time.sleep(600)  (" in shown and ".py:8 in sleeper)" in shown
        assert "<dynamic-code>" not in shown
        assert _value(run(nb_client, 4)) == {0: 100, 1: 101}  # the kernel launches again


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_example_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(EXAMPLE, as_version=4)
    with client(nb, tmp_path) as nb_client:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if any(GLOO_FLAKE in e for e in errors(run(nb_client, index))):
                run(nb_client, index)  # run the cell again, as a user would (see SETUP)
            assert not errors(cell), (index, cell.source, errors(cell))
    out = "".join(_stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "[rank0]: " in out and "[rank1]: " in out, out
