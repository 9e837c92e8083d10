"""One measured process for ``interactive.py``; its last line printed is JSON.

    python benchmarks/interactive_peers.py warm PEER NPROC REPEATS
    python benchmarks/interactive_peers.py data REPEATS [--gb]
    python benchmarks/interactive_peers.py cold NPROC [--warm-up]

``warm``: one launch to warm up, then REPEATS timed launches of the same job
(join a gloo group, one all_reduce) by PEER: ``icelaunch``, ``floor`` (this
process, torch imported, forks the children, which join over a FileStore) or
``notebook_launcher`` (accelerate, fork). ``data``: icelaunch, 4 warm workers,
arguments and results of various sizes; seconds and the process tree's peak PSS.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:2] == ["cold"] and "--warm-up" in sys.argv:
    import icelaunch

    icelaunch.warm_up()  # before torch: the fork server imports it alongside this process

import functools
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

MB = 1_000_000


def job(*_: Any) -> None:
    """Join a gloo group if there is none yet, one all_reduce."""
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    if own:
        dist.destroy_process_group()


def floor_launch(n: int) -> None:
    """The least any launcher can do: fork n children that join a group and all_reduce."""
    fd, path = tempfile.mkstemp()
    os.close(fd)
    pids = []
    for rank in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                store = dist.FileStore(path, n)
                dist.init_process_group("gloo", store=store, rank=rank, world_size=n)
                dist.all_reduce(torch.ones(1))
                dist.destroy_process_group()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert status == 0
    os.remove(path)


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launchers(n: int) -> dict[str, Callable[[], Any]]:
    def icelaunch() -> Any:
        return launcher(job, launcher)

    def notebook() -> Any:
        from accelerate import notebook_launcher

        return notebook_launcher(job, num_processes=n, use_port=_free_port())

    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher(f"cpu:0-{n - 1}").freeze()
    return {"icelaunch": icelaunch, "floor": lambda: floor_launch(n), "notebook_launcher": notebook}


def warm(peer: str, n: int, repeats: int) -> dict[str, Any]:
    run = launchers(n)[peer]
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        print(json.dumps({"partial": times}), flush=True)  # kept if a later launch hangs
    return {"times": times}


SAMPLER = """
import contextlib, os, sys, threading
with contextlib.suppress(OSError):
    os.nice(-10)  # sample on time on a busy machine (allowed as root, else ignored)
root, peak, stop = int(sys.argv[1]), 0, threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

def tree(pid):
    found = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                for child in fh.read().split():
                    found += tree(int(child))
    except OSError:
        pass
    return found

def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

while True:
    peak = max(peak, sum(pss_kb(p) for p in tree(root) if p != os.getpid()))
    if stop.wait(0.01):
        break
print(peak * 1024, flush=True)
"""


class PeakPss:
    """Peak of the summed PSS of this process and its descendants, sampled every
    10 ms by a separate process (so that sampling takes nothing from the launcher)."""

    def __enter__(self) -> PeakPss:
        import subprocess

        self._proc = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.peak = 0
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate("", timeout=60)
        self.peak = int(out)


def takes(launcher: Any, data: Any) -> int:
    dist.all_reduce(torch.ones(1))
    return 0


def gives(launcher: Any, nbytes: int, back: bool) -> Any:
    value = torch.full((nbytes // 4,), float(launcher.rank))
    dist.all_reduce(torch.ones(1))
    return value if back else None


def settle(timeout: float = 30) -> None:
    """Wait until the previous launch's workers are gone (the fork server has no children),
    so that they do not count in the next measurement."""
    import multiprocessing.forkserver as fs

    pid = fs._forkserver._forkserver_pid
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            children = "".join(_read(f"/proc/{pid}/task/{t}/children") for t in tasks)
        except OSError:
            return
        if not children.strip():
            return
        time.sleep(0.01)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def measured(fn: Callable[[], Any]) -> tuple[float, int]:
    settle()
    with PeakPss() as pss:
        start = time.perf_counter()
        result = fn()
        took = time.perf_counter() - start
        del result
    return took, pss.peak


def write_to_memfd(t: torch.Tensor) -> None:
    """The physical floor of sharing ``t`` with processes not forked from this one:
    its bytes written once into shared memory (the kernel allocates every page)."""
    view = memoryview(t.numpy()).cast("B")
    fd = os.memfd_create("floor")
    try:
        done = 0
        while done < view.nbytes:
            done += os.pwrite(fd, view[done:], done)
    finally:
        os.close(fd)


def data(repeats: int, with_gb: bool) -> dict[str, Any]:
    """Rows: tiny, 100 MB, 400 MB (new tensor, then the same again), 1 GB arguments;
    4 ranks each making 100 MB and returning it or not."""
    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher("cpu:0-3").freeze()
    launcher(takes, launcher, 0)
    rows: dict[str, list[tuple[float, int]]] = {}

    def row(name: str, fn: Callable[..., Any], *args: Any) -> None:
        rows.setdefault(name, []).append(measured(lambda: launcher(fn, launcher, *args)))

    for _ in range(repeats):
        row("tiny argument", takes, torch.ones(3))
        for mb in (100, 400):
            arg = torch.rand(mb * MB // 4)
            row(f"{mb} MB tensor argument, first launch", takes, arg)
            row(f"{mb} MB tensor argument, again", takes, arg)
            del arg
            alone = torch.rand(mb * MB // 4)  # the floor of a first launch: its one copy
            name = f"{mb} MB tensor argument: floor, its bytes written to a memfd, no launch"
            rows.setdefault(name, []).append(measured(functools.partial(write_to_memfd, alone)))
            del alone
            alone = torch.rand(mb * MB // 4)
            name = f"{mb} MB tensor argument: torch's `share_memory_()` alone, no launch"
            rows.setdefault(name, []).append(measured(alone.share_memory_))
            del alone
        row("4 ranks making 100 MB, returning None", gives, 100 * MB, False)
        row("4 ranks each returning 100 MB", gives, 100 * MB, True)
    if with_gb:
        arg = torch.rand(1000 * MB // 4)
        row("1 GB tensor argument, first launch", takes, arg)
    return {"rows": rows}


def cold(n: int) -> dict[str, Any]:
    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher(f"cpu:0-{n - 1}").freeze()
    launcher(job, launcher)
    return {}


def main() -> None:
    mode = sys.argv[1]
    if mode == "warm":
        result = warm(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "data":
        result = data(int(sys.argv[2]), "--gb" in sys.argv)
    else:
        result = cold(int(sys.argv[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
