"""Launches from a real Jupyter kernel (ipykernel driven by nbclient), as in a notebook.

A worker defined in a cell runs in two CPU workers, its output reaches the
cell with rank prefixes, a second launch takes the warm path, and a kernel
interrupt (Ctrl-C in Jupyter: SIGINT to the kernel's process group) stops the
job, raises KeyboardInterrupt in the cell and leaves no worker behind.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
GLOO_FLAKE = "connectFullMesh"
EXAMPLE = ROOT / "examples" / "notebook.ipynb"
KERNEL_NAME = "icelaunch-test"
STARTUP_TIMEOUT_S = 90
CELL_TIMEOUT_S = 120
WORKERS_UP_TIMEOUT_S = 60
GONE_TIMEOUT_S = 15

# torch's gloo handshake fails now and then under load ("connectFullMesh failed ...
# Connection closed by peer", also with plain torch: pytorch/pytorch#53270); a restart
# absorbs it, and an interrupt still ends the launch.
SETUP = """\
import os, signal, time
from icelaunch import ElasticLauncher

launcher = ElasticLauncher("cpu:0-1", max_restarts=1).freeze()
"""

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


def _write_kernel_spec(kernels_dir: Path) -> None:
    """A kernel spec that runs ipykernel on this very interpreter (the venv's)."""
    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "icelaunch tests",
        "language": "python",
        "interrupt_mode": "signal",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


@contextlib.contextmanager
def _client(nb: Any, tmp_path: Path) -> Iterator[NotebookClient]:
    """A started kernel for ``nb`` (working directory ``tmp_path``), shut down afterwards."""
    _write_kernel_spec(tmp_path / "kernels")
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
        connection_file=str(tmp_path / "connection.json"),
    )
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    try:
        with client.setup_kernel(env=env):
            yield client
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def _notebook(*sources: str) -> Any:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def _run(client: NotebookClient, index: int) -> Any:
    cell = client.nb.cells[index]
    client.execute_cell(cell, index)
    return cell


def _errors(cell: Any) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]


def _value(cell: Any) -> Any:
    """The cell's result (its last expression), as a Python value."""
    assert not _errors(cell), _errors(cell)
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert len(results) == 1, cell.outputs
    return ast.literal_eval(results[0].data["text/plain"])


def _stream_text(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_launch_from_notebook_cells(tmp_path: Path) -> None:
    nb = _notebook(SETUP, DEFINE, LAUNCH, RELAUNCH)
    with _client(nb, tmp_path) as client:
        for index in range(2):
            assert not _errors(_run(client, index))
        launched = _run(client, 2)
        assert _value(launched) == {0: (True, 10), 1: (True, 11)}
        assert _value(_run(client, 3)) == {0: 0, 1: 3}  # warm: the fork server is up
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


def _interrupted_launch(client: NotebookClient, index: int, pid_dir: Path) -> Any:
    """Run cell ``index`` (a launch of sleepers), interrupt it, check the workers are gone."""
    pid_dir.mkdir()
    interrupter = _Interrupter(client.km, pid_dir, nworkers=2)
    interrupter.start()
    try:
        cell = _run(client, index)
    finally:
        interrupter.join(WORKERS_UP_TIMEOUT_S + 10)
    assert len(interrupter.workers) == 2, "the workers never wrote their pid files"
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert [o.ename for o in errors] == ["KeyboardInterrupt"], _errors(cell) or cell.outputs
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
    nb = _notebook(SETUP, SLEEPER, *launches, AFTER_INTERRUPT)
    with _client(nb, tmp_path) as client:
        for index in range(2):
            assert not _errors(_run(client, index))
        _interrupted_launch(client, 2, dirs[False])  # workers get the SIGINT too
        cell = _interrupted_launch(client, 3, dirs[True])  # workers ignore it: we stop them
        # where they were, printed before KeyboardInterrupt, names the cell's real file
        shown = _stream_text(cell)
        assert "where the running ranks were:" in shown, cell.outputs
        assert "ranks 0-1: time.sleep(600)  (" in shown and ".py:8 in sleeper)" in shown
        assert "<dynamic-code>" not in shown
        assert _value(_run(client, 4)) == {0: 100, 1: 101}  # the kernel launches again


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_example_notebook_runs(tmp_path: Path) -> None:
    nb = nbformat.read(EXAMPLE, as_version=4)
    with _client(nb, tmp_path) as client:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if any(GLOO_FLAKE in e for e in _errors(_run(client, index))):
                _run(client, index)  # run the cell again, as a user would (see SETUP)
            assert not _errors(cell), (index, cell.source, _errors(cell))
    out = "".join(_stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "[rank0]: " in out and "[rank1]: " in out, out
