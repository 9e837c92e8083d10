"""Helpers shared by the test tiers (tests/unit, tests/launch, tests/system).

Worker functions here are importable by workers (tests/ is on sys.path). The sections:
worker functions and process checks; multi-node "nodes" as separate launcher processes;
the ``icelaunch`` command run to the end; a command under a pseudo-terminal; Jupyter
kernels driven by nbclient; objects of every kind for the shared-memory transfer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
import tty
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher

if TYPE_CHECKING:  # the notebook extras are imported only by the tests that use them
    from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20

# --- worker functions and process checks --------------------------------------------------


def all_reduce_sum(launcher: ElasticLauncher) -> float:
    """Sum of (rank + 1) over all ranks, through a real all_reduce."""
    t = torch.tensor([float(launcher.rank + 1)])
    dist.all_reduce(t)
    return float(t.item())


# multiprocessing's resource tracker and fork server are one per process, shared
# by every launch, and exit with that process: helpers, not leaked workers.
# (tests/system/test_warm_start_process.py checks that the fork server ends with its process.)
MP_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def is_mp_helper(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of multiprocessing's per-process helper processes."""
    try:
        cmdline = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(name in cmdline for name in MP_HELPERS)


def assert_gone(pids: Iterable[int], seconds: float = 10.0) -> None:
    """None of ``pids`` runs after at most ``seconds`` (a survivor is killed, then reported)."""
    pids = list(pids)
    deadline = time.monotonic() + seconds
    while alive := [p for p in pids if is_running(p)]:
        if time.monotonic() > deadline:
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"processes {alive} outlived their launch")
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# --- multi-node: nodes as separate launcher processes ---------------------------------------
# Run "nodes" of a multi-node job as separate launcher processes on this machine.
#
# Each node is ``python node.py`` (the script below, written to a test's tmp_path):
# it builds ``ElasticLauncher(**kwargs).freeze()``, launches :func:`work` and
# writes what came back (or the error) as JSON.

NODE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time

    import torch
    import torch.distributed as dist

    from icelaunch import ElasticLauncher

    LOOP_LIMIT_S = 60


    def info(launcher, total):
        names = ["rank", "local_rank", "world_size", "local_world_size", "group_rank",
                 "group_world_size", "restart_count", "rdzv_id", "master_addr"]
        values = {name: getattr(launcher, name) for name in names}
        values["sum"] = total
        return values


    def all_reduce(launcher):
        t = torch.tensor([float(launcher.rank + 1)])
        dist.all_reduce(t)
        return t.item()


    def flag(flag_dir, launcher, what):
        name = f"{what}-{launcher.restart_count}-{launcher.group_rank}-{launcher.local_rank}"
        open(os.path.join(flag_dir, name), "w").close()


    def work(launcher, mode, flag_dir):
        total = all_reduce(launcher)
        if mode == "loop" and launcher.restart_count == 0:
            # All-reduce until a peer node disappears (the collective then fails and
            # the agent restarts the group), bounded in case nothing happens.
            flag(flag_dir, launcher, "looping")
            deadline = time.monotonic() + LOOP_LIMIT_S
            while time.monotonic() < deadline:
                all_reduce(launcher)
                time.sleep(0.02)
            raise TimeoutError(f"no node left the job within {LOOP_LIMIT_S} s")
        if mode == "grow":
            # Alone, the first attempt fails (restart_count 1 here, 0 on a newcomer);
            # then all-reduce until a second node joins and the group is rebuilt.
            if launcher.world_size == 1 and launcher.restart_count == 0:
                raise RuntimeError("the first attempt fails")
            flag(flag_dir, launcher, f"world{launcher.world_size}")
            deadline = time.monotonic() + LOOP_LIMIT_S
            while launcher.world_size == 1 and time.monotonic() < deadline:
                all_reduce(launcher)
                time.sleep(0.02)
            if launcher.world_size == 1:
                raise TimeoutError(f"no node joined within {LOOP_LIMIT_S} s")
        if mode == "fail_once" and launcher.restart_count == 0:
            if launcher.rank == launcher.world_size - 1:
                raise RuntimeError("the last rank fails on the first attempt")
            all_reduce(launcher)  # fails as soon as the failed rank is gone
            raise RuntimeError("unreachable: a peer failed")
        return info(launcher, total)


    if __name__ == "__main__":
        kwargs, mode, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
        started = time.monotonic()
        try:
            launcher = ElasticLauncher(**kwargs).freeze()
            result = {"ok": launcher(work, launcher, mode, os.path.dirname(out))}
        except Exception as exc:
            result = {"error": f"{type(exc).__module__}.{type(exc).__qualname__}",
                      "message": str(exc)}
        result["elapsed"] = time.monotonic() - started
        with open(out + ".tmp", "w") as fh:
            json.dump(result, fh)
        os.replace(out + ".tmp", out)
    """
)


@dataclass
class Node:
    """One launcher process of a multi-node test job."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    log: Path

    def result(self, timeout: float) -> dict[str, Any]:
        """What the node's launcher returned (``ok``) or raised (``error``, ``message``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            message = f"node {self.name} still runs after {timeout} s:\n{self.tail()}"
            raise AssertionError(message) from None
        if not self.out.exists():
            raise AssertionError(
                f"node {self.name} wrote no result (exit {self.proc.returncode}):\n{self.tail()}"
            )
        result: dict[str, Any] = json.loads(self.out.read_text())
        if "ok" in result:
            result["ok"] = {int(rank): value for rank, value in result["ok"].items()}
        return result

    def ok(self, timeout: float) -> dict[int, dict[str, Any]]:
        """The node's ``{global_rank: info}``; fails the test on an error."""
        result = self.result(timeout)
        assert "ok" in result, f"node {self.name} failed: {result}\n{self.tail()}"
        values: dict[int, dict[str, Any]] = result["ok"]
        return values

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill_tree(self) -> None:
        """SIGKILL the launcher and everything it started (fork server, workers)."""
        kill_trees([self.proc.pid])


def start_node(
    tmp_path: Path,
    name: str,
    mode: str = "plain",
    *,
    netns: str | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Node:
    """Start one node: ``ElasticLauncher(**kwargs)`` in a new process, running ``mode``.

    ``netns`` runs it in that network namespace (``ip netns exec`` execs, so the
    process is the launcher itself); ``env`` adds environment variables.
    """
    script = tmp_path / "node.py"
    if not script.exists():
        script.write_text(NODE_SCRIPT)
    out, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    kwargs.setdefault("monitor_interval", 0.5)
    argv = [sys.executable, str(script), json.dumps(kwargs), mode, str(out)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            argv,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
        )
    return Node(name, proc, out, log)


def kill_trees(pids: Iterable[int]) -> None:
    """SIGKILL each process and all its descendants; wait until they are gone."""
    procs: list[psutil.Process] = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            procs.extend([parent, *parent.children(recursive=True)])
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def stop_nodes(nodes: Iterable[Node]) -> None:
    """Kill whatever is left of ``nodes`` (for a test's ``finally``)."""
    nodes = list(nodes)
    kill_trees(n.proc.pid for n in nodes if n.proc.poll() is None)
    for node in nodes:
        node.proc.wait(10)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def flags(tmp_path: Path, prefix: str) -> list[str]:
    """The flag files workers wrote (``looping-<restart>-<group_rank>-<local_rank>``)."""
    return sorted(n for n in os.listdir(tmp_path) if n.startswith(prefix))


def timed_out_clearly(launcher: Any, backend: str, endpoint: str, rdzv_id: str, key: str) -> str:
    """Launch a 2-node job alone: a RendezvousTimeoutError after 3 s plus a few; its text."""
    from icelaunch import RendezvousTimeoutError

    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError) as info:
        launcher(all_reduce_sum, launcher)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert f"timed out after 3 s ({key}) waiting for 2 node(s)" in message
    assert f"rdzv_backend={backend!r}, endpoint {endpoint!r}, rdzv_id {rdzv_id!r}" in message
    assert 3 <= elapsed < 3 + 8, f"the error came after {elapsed:.1f} s"
    return message


def results_of(
    nodes: list[Node], timeout: float = 60
) -> tuple[list[dict[int, Any]], dict[int, Any]]:
    """Every node's results (stopping all nodes whatever happens) and all ranks merged."""
    try:
        results = [node.ok(timeout) for node in nodes]
    finally:
        stop_nodes(nodes)
    merged = {rank: info for result in results for rank, info in result.items()}
    return results, merged


# --- the icelaunch command, run to the end --------------------------------------------------

CONSOLE_SCRIPT = Path(sys.executable).with_name("icelaunch")
RUN_TIMEOUT_S = 45
GRACE_S = 5.0


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def launch(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    interrupt_when: str | None = None,
    timeout: float = RUN_TIMEOUT_S,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run a command line to the end; fail if it or any worker outlives it.

    Output goes to files, not pipes, so a leaked process holding them cannot stall
    the wait. With ``interrupt_when``, SIGINT is sent once stdout shows that text.
    """
    seen: dict[int, psutil.Process] = {}
    with tempfile.TemporaryDirectory() as logs:
        out_path, err_path = Path(logs, "stdout"), Path(logs, "stderr")
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, env=env)
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update({p.pid: p for p in _descendants(parent)})
            if interrupt_when and interrupt_when in out_path.read_text():
                proc.send_signal(signal.SIGINT)
                interrupt_when = None
            time.sleep(0.05)
        if proc.poll() is None:
            for p in [*seen.values(), parent]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
            pytest.fail(f"{argv} ran past {timeout} s")
        result = subprocess.CompletedProcess(
            argv, proc.returncode, out_path.read_text(), err_path.read_text()
        )
    deadline = time.monotonic() + GRACE_S
    while _alive(list(seen.values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _alive(list(seen.values()))
    for p in survivors:
        p.kill()
    assert not survivors, f"workers survived the command: {survivors}"
    return result


def icelaunch(*args: str) -> list[str]:
    """The installed console script (``python -m icelaunch`` where it is missing)."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT), *args]
    return [sys.executable, "-m", "icelaunch", *args]


def write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


# --- a terminal: a command under a raw pseudo-terminal ------------------------------------------

#: (all it wrote so far, the terminal's master fd, the process), after every read
OnOutput = Callable[[bytes, int, subprocess.Popen[bytes]], None]


def run_in_pty(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    timeout: float,
    on_output: OnOutput | None = None,
    winsize: tuple[int, int] | None = None,
) -> tuple[int, bytes, list[tuple[float, int]]]:
    """Run ``argv`` with a raw pseudo-terminal (``winsize``: rows, columns) as stdout and
    stderr, in a session of its own, killed after ``timeout`` s.

    Returns its exit code, all it wrote, and (time.monotonic(), bytes so far) after
    every read; ``on_output`` is called after every read too.
    """
    master, slave = os.openpty()
    tty.setraw(slave)  # the launcher's bytes arrive unchanged (no \n -> \r\n)
    if winsize is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *winsize, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    marks: list[tuple[float, int]] = []
    total = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 1 << 20)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            total += len(data)
            marks.append((time.monotonic(), total))
            chunks.append(data)
            if on_output is not None:
                on_output(b"".join(chunks), master, proc)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, b"".join(chunks), marks


# --- Jupyter: a real kernel driven by nbclient -------------------------------------------------

KERNEL_NAME = "icelaunch-test"
STARTUP_TIMEOUT_S = 90
CELL_TIMEOUT_S = 120

# torch's gloo handshake fails now and then under load ("connectFullMesh failed ...
# Connection closed by peer", also with plain torch: pytorch/pytorch#53270); a restart
# absorbs it, and an interrupt still ends the launch.
SETUP = """\
import os, signal, time
from icelaunch import ElasticLauncher

launcher = ElasticLauncher("cpu:0-1", max_restarts=1).freeze()
"""


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
def client(nb: Any, tmp_path: Path) -> Iterator[NotebookClient]:
    """A started kernel for ``nb`` (working directory ``tmp_path``), shut down afterwards."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    _write_kernel_spec(tmp_path / "kernels")
    km = KernelManager(
        kernel_name=KERNEL_NAME,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]),
        connection_file=str(tmp_path / "connection.json"),
    )
    nb_client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipython")}
    try:
        with nb_client.setup_kernel(env=env):
            yield nb_client
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)


def notebook(*sources: str) -> Any:
    import nbformat

    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])


def run(nb_client: NotebookClient, index: int) -> Any:
    """Execute cell ``index`` of the client's notebook; the cell, with its outputs."""
    cell = nb_client.nb.cells[index]
    nb_client.execute_cell(cell, index)
    return cell


def errors(cell: Any) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]


# --- objects of every kind for the shared-memory transfer -------------------------------------


@dataclasses.dataclass
class Record:
    """A user dataclass carrying a tensor and an array."""

    weights: torch.Tensor
    table: np.ndarray
    label: str


def make_kinds(seed: int) -> dict[str, Any]:
    """One object of every supported kind, each at least 1 MiB unless said small."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = torch.randn(800, 1000, generator=gen)
    module = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.BatchNorm1d(300_000))
    module[1].running_mean.normal_(generator=gen)
    grid = rng.standard_normal((700, 400))
    return {
        "float32": torch.randn(600_000, generator=gen),
        "bfloat16_2d": torch.randn(800, 900, generator=gen).bfloat16(),
        "int64_transposed": torch.randint(0, 1 << 40, (500, 600), generator=gen).t(),
        "bool": torch.rand(3_000_000, generator=gen) > 0.5,
        "requires_grad": torch.randn(400_000, generator=gen).requires_grad_(),
        "views": (base, base[7:], base[:, ::3]),
        "nested": [{"deep": [torch.randn(300_000, generator=gen)]}],
        "dataclass": Record(torch.randn(300_000, generator=gen), rng.random(200_000), "r"),
        "module": module,
        "numpy_c": rng.standard_normal(300_000),
        "numpy_fortran": np.asfortranarray(grid),
        "numpy_strided": grid[:, ::2],
        "bytes": rng.bytes(3 * MB),
        "bytearray": bytearray(rng.bytes(2 * MB)),
        "memoryview": memoryview(np.ascontiguousarray(grid[:400])),
        "small": (torch.ones(3), np.arange(4), b"tiny", [1, 2.5, "x"]),
    }


def digest(obj: Any) -> str:
    """A checksum of the content, types, shapes and dtypes of ``obj``."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    h.update(type(obj).__qualname__.encode())
    if isinstance(obj, torch.nn.Module):
        _feed(h, dict(obj.state_dict()))
    elif isinstance(obj, torch.Tensor):
        flat = obj.detach().contiguous().reshape(-1).view(torch.uint8)
        h.update(f"{obj.dtype}{tuple(obj.shape)}{obj.requires_grad}".encode())
        h.update(flat.numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode() + obj.tobytes())
    elif isinstance(obj, memoryview):
        h.update(f"{obj.format}{obj.shape}".encode() + obj.tobytes())
    elif isinstance(obj, bytes | bytearray):
        h.update(bytes(obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _feed(h, value)
    elif dataclasses.is_dataclass(obj):
        _feed(h, dataclasses.astuple(obj))
    else:
        h.update(repr(obj).encode())


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (no GPU on the test machine)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda:0")


# --- pid files, grandchildren and /dev/shm: what a launch may leave behind ---------------------

STRAY = {  # left over in a shell, a notebook server or a parent launcher
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "10.255.255.1",
    "MASTER_PORT": "1",
    "NNODES": "2",
    "NODE_RANK": "1",
}


def pid_files(folder: Path) -> list[int]:
    """The pids the ranks wrote to ``folder/*.pid``."""
    return [int(p.read_text()) for p in folder.glob("*.pid")]


def wait_for_pid_files(folder: Path, count: int, proc: subprocess.Popen[str] | None = None) -> None:
    """Wait (at most 120 s) until ``count`` ranks wrote their pid files."""
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.pid"))) < count:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.communicate()[0])
        assert time.monotonic() < deadline, "the ranks did not get going"
        time.sleep(0.05)


def grandchildren(tmp: Path) -> list[int]:
    """The pids of the processes the workers started, as they wrote them to ``tmp``."""
    return [int(p.read_text()) for p in tmp.iterdir() if p.name.startswith(("same", "setsid"))]


def ours_in_dev_shm(pids: set[int]) -> list[str]:
    """Entries of /dev/shm that processes ``pids`` (or icelaunch) created."""
    return [
        name
        for name in os.listdir("/dev/shm")
        if name.startswith("icelaunch") or any(f"_{pid}_" in name for pid in pids)
    ]


# --- extra CPU load, for races that show under a busy machine ------------------------------


@contextlib.contextmanager
def cpu_hogs(count: int = 2) -> Iterator[None]:
    """``count`` processes spinning in pure Python while the block runs; killed after."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# --- run reports written by hand (report.schema.json, version 1) ---------------------------


def _states(up: float, end: float, slow: bool = False, stuck: float = 1e9) -> list[list[Any]]:
    """Sampled states every 0.5 s from ``up`` to ``end``: a step runs, then waits in
    all_reduce (a slow rank only runs); from ``stuck`` on, it only waits."""
    states: list[list[Any]] = []
    t, i = up, 0
    while t < end - 1e-9:
        nxt = min(round(t + 0.5, 3), end)
        waiting = (not slow and i % 3 == 2) or t >= stuck
        state = "waiting" if waiting else "running"
        where = "all_reduce (train.py:18)" if waiting else "step (train.py:12)"
        if states and states[-1][2] == state:
            states[-1][1] = nxt
        else:
            states.append([t, nxt, state, where])
        t, i = nxt, i + 1
    return states


def rank_entry(
    rank: int, attempt: int, started: float, up: float | None, ended: float | None, end: str,
    code: int | None = None, sig: str | None = None, slow: bool = False, stuck: float = 1e9,
) -> dict[str, Any]:  # fmt: skip
    """One rank's entry in one attempt, its states sampled from ``up`` to its end."""
    last = ended if ended is not None else started + 3.0
    return {
        "rank": rank,
        "local_rank": rank,
        "attempt": attempt,
        "pid": 4000 + 100 * attempt + rank,
        "started_s": started,
        "up_s": up,
        "ended_s": ended,
        "end": end,
        "exit_code": code,
        "signal": sig,
        "peak_rss_bytes": (300 + 10 * rank) * MB,
        "cpu_s": round(last - started, 2),
        "gpu_peak_bytes": None,
        "states": _states(up, last, slow, stuck) if up is not None else [],
        "stack_at_stop": None,
    }


def run_report(**changes: Any) -> dict[str, Any]:
    """A launch of 4 ranks, written by hand: attempt 0 fails (rank 2 at 5.0 s, rank 1 slow
    from 2.0 s, rank 3 killed after the stop's grace), a restart at 8.5 s, attempt 1 fails
    again (rank 2 at 13.2 s, rank 3 stalled in all_reduce)."""
    ranks = [
        rank_entry(0, 0, 0.2, 1.1, 5.4, "stopped", -15, "SIGTERM", stuck=5.0),
        rank_entry(1, 0, 0.2, 1.2, 5.4, "stopped", -15, "SIGTERM", slow=True),
        rank_entry(2, 0, 0.2, 1.3, 5.0, "failed", 1),
        rank_entry(3, 0, 0.2, 1.1, 8.4, "killed", -9, "SIGKILL", stuck=5.0),
        *(
            rank_entry(r, 1, 8.6, 9.4, 13.5, "stopped", -15, "SIGTERM", stuck=10.0)
            for r in (0, 1, 3)
        ),
        rank_entry(2, 1, 8.6, 9.5, 13.2, "failed", 1),
    ]
    failed = "WorkerFailedError: rank 2 (local rank 2, exit code 1) failed first: ValueError: "
    failed += "loss is nan"
    report: dict[str, Any] = {
        "schema": "icelaunch-run-report",
        "version": 1,
        "icelaunch": "0.1.0",
        "torch": "2.13.0",
        "host": "node-a",
        "launcher_pid": 3999,
        "node_rank": 0,
        "target": "train.py --epochs 2",
        "parameters": {"devices": "cpu:0-3", "max_restarts": 1},
        "started_at": "2026-12-05T10:00:00+00:00",
        "ended_at": "2026-12-05T10:00:14+00:00",
        "duration_s": 14.0,
        "sample_interval_s": 0.5,
        "outcome": {
            "status": "failed",
            "message": "rank 2 failed (exit code 1)",
            "signal": None,
            "exit_status": 1,
        },
        "events": [
            {"t_s": 0.0, "kind": "launch_started", "message": "the launch began"},
            {"t_s": 0.2, "kind": "workers_started", "message": "attempt 0", "attempt": 0},
            {
                "t_s": 5.0,
                "kind": "rank_exited",
                "message": "rank 2 ended with status 1",
                "attempt": 0,
                "rank": 2,
            },
            {
                "t_s": 8.5,
                "kind": "restart",
                "message": "restarting (1 of 1): rank 2 failed",
                "attempt": 0,
            },
            {"t_s": 8.6, "kind": "workers_started", "message": "attempt 1", "attempt": 1},
            {"t_s": 13.2, "kind": "failure", "message": "rank 2 failed", "attempt": 1},
            {"t_s": 14.0, "kind": "launch_ended", "message": "failed"},
        ],
        "ranks": ranks,
        "findings": [
            {
                "kind": "slow_rank",
                "rank": 1,
                "attempt": 0,
                "from_s": 2.0,
                "to_s": 4.8,
                "message": "rank 1 is slowing the job: for 3 s the other ranks waited (about 2 s "
                "each) in all_reduce (train.py:18) while rank 1 was in load_batch (data.py:40)",
                "waited_s": 2.1,
                "function": "load_batch",
                "where": "data.py:40",
                "waited_in": "all_reduce",
                "waited_where": "train.py:18",
            },
            {
                "kind": "stall",
                "rank": 3,
                "attempt": 1,
                "from_s": 10.0,
                "to_s": 13.4,
                "message": "rank 3 waited 3 s in all_reduce (train.py:18) without moving",
                "waited_in": "all_reduce",
                "waited_where": "train.py:18",
            },
        ],
        "stacks_at_stop": None,
        "failure": {
            "type": "WorkerFailedError",
            "message": failed + "\n  Traceback (most recent call last): ...",
            "ranks": [
                {
                    "rank": 2,
                    "local_rank": 2,
                    "exit_code": 1,
                    "signal": None,
                    "exc_type": "ValueError",
                    "message": "loss is nan",
                }
            ],
        },
    }
    report.update(changes)
    return report
