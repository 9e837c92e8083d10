"""Run "nodes" of a multi-node job as separate launcher processes on this machine.

Each node is ``python node.py`` (the script below, written to a test's tmp_path):
it builds ``ElasticLauncher(**kwargs).freeze()``, launches :func:`work` and
writes what came back (or the error) as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

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
    import pytest

    from icelaunch import RendezvousTimeoutError
    from tests_helpers import all_reduce_sum

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
