"""Several nodes on one machine: each node is its own launcher process, over loopback.

static and c10d rendezvous, elastic scale-down and scale-up on c10d, and nodes with
different addresses. Each node runs 1-2 CPU workers (gloo)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    flags,
    results_of,
    start_node,
    stop_nodes,
    wait_for,
)
from icelaunch._engine._ports import free_port

pytestmark = [pytest.mark.slow]

RESULT_TIMEOUT_S = 60
# Short keep-alives and last call, so that membership changes settle in seconds.
ELASTIC = "last_call_timeout=2,keep_alive_interval=1,keep_alive_max_attempt=5,join_timeout=40"


@pytest.mark.timeout(90)
def test_static_two_nodes_form_one_job_with_contiguous_ranks(tmp_path: Path) -> None:
    port = free_port()
    common = {"devices": "cpu:0-1", "nnodes": "2", "master_port": port, "rdzv_id": "st"}
    nodes = [start_node(tmp_path, f"node{r}", node_rank=r, **common) for r in (1, 0)]
    try:
        by_node = {node.name: node.ok(RESULT_TIMEOUT_S) for node in nodes}
    finally:
        stop_nodes(nodes)
    assert sorted(by_node["node0"]) == [0, 1]  # node 0 holds ranks 0..k-1
    assert sorted(by_node["node1"]) == [2, 3]
    for node_rank, name in enumerate(["node0", "node1"]):
        for rank, info in by_node[name].items():
            assert info["group_rank"] == node_rank
            assert info["local_rank"] == rank - 2 * node_rank
            assert (info["world_size"], info["group_world_size"]) == (4, 2)
            assert info["local_world_size"] == 2
            assert info["sum"] == 1 + 2 + 3 + 4
            assert info["restart_count"] == 0
            assert info["master_addr"] == "127.0.0.1"


@pytest.mark.timeout(90)
def test_c10d_two_nodes_form_one_job(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    common = {
        "devices": "cpu:0-1",
        "nnodes": "2",
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint,
        "rdzv_id": "c10d-pair",
    }
    nodes = [start_node(tmp_path, f"node{i}", **common) for i in range(2)]
    results, merged = results_of(nodes, RESULT_TIMEOUT_S)
    assert sorted(merged) == [0, 1, 2, 3]
    for result in results:  # each node's ranks are contiguous, whichever group rank it got
        (group_rank,) = {info["group_rank"] for info in result.values()}
        assert sorted(result) == [2 * group_rank, 2 * group_rank + 1]
    for rank, info in merged.items():
        assert rank // 2 == info["group_rank"]
        assert (info["world_size"], info["group_world_size"], info["sum"]) == (4, 2, 10)
        assert info["rdzv_id"] == "c10d-pair"


def _check_uneven_world(by_node: dict[str, dict[int, dict[str, Any]]]) -> None:
    """Node "three" runs cpu:0-2 and node "one" cpu:0: one world of 4, each node's
    ranks contiguous (whichever group rank it got), local ranks 0..n-1 per node."""
    assert sorted(r for result in by_node.values() for r in result) == [0, 1, 2, 3]
    for name, count in (("three", 3), ("one", 1)):
        result = by_node[name]
        (group_rank,) = {info["group_rank"] for info in result.values()}
        first = 0 if group_rank == 0 else 4 - count
        assert sorted(result) == list(range(first, first + count))
        for rank, info in result.items():
            assert info["local_rank"] == rank - first
            assert info["local_world_size"] == count
            assert (info["world_size"], info["group_world_size"]) == (4, 2)
            assert info["sum"] == 1 + 2 + 3 + 4


@pytest.mark.timeout(90)
def test_c10d_nodes_with_different_device_counts_form_one_world(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    common = {"nnodes": "2", "rdzv_backend": "c10d", "rdzv_endpoint": endpoint, "rdzv_id": "odd"}
    nodes = [
        start_node(tmp_path, "three", devices="cpu:0-2", **common),
        start_node(tmp_path, "one", devices="cpu:0", **common),
    ]
    results, _ = results_of(nodes, RESULT_TIMEOUT_S)
    _check_uneven_world(dict(zip(["three", "one"], results, strict=True)))


@pytest.mark.timeout(90)
def test_static_nodes_with_different_device_counts_form_one_world(tmp_path: Path) -> None:
    common = {"nnodes": "2", "master_port": free_port(), "rdzv_id": "odd-static"}
    nodes = [
        start_node(tmp_path, "one", devices="cpu:0", node_rank=1, **common),
        start_node(tmp_path, "three", devices="cpu:0-2", node_rank=0, **common),
    ]
    results, _ = results_of(nodes, RESULT_TIMEOUT_S)
    by_node = dict(zip(["one", "three"], results, strict=True))
    _check_uneven_world(by_node)
    assert sorted(by_node["three"]) == [0, 1, 2]  # node rank 0 holds the first ranks


@pytest.mark.timeout(120)
def test_c10d_survivor_continues_after_a_node_is_killed(tmp_path: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    common = {
        "devices": "cpu:0",
        "nnodes": "1:2",
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint,
        "rdzv_id": "shrink",
        "max_restarts": 1,
    }
    # The survivor hosts the rendezvous store: the store lives in its launcher process.
    survivor = start_node(
        tmp_path, "survivor", "loop", rdzv_configs=f"{ELASTIC},is_host=1", **common
    )
    victim = start_node(tmp_path, "victim", "loop", rdzv_configs=f"{ELASTIC},is_host=0", **common)
    try:
        wait_for(
            lambda: len(flags(tmp_path, "looping-0-")) == 2,
            RESULT_TIMEOUT_S,
            "both nodes' workers to loop on all_reduce in a world of 2",
        )
        assert flags(tmp_path, "looping-0-") == ["looping-0-0-0", "looping-0-1-0"]
        killed_at = time.monotonic()
        victim.kill_tree()
        result = survivor.ok(RESULT_TIMEOUT_S)
        recovered_in = time.monotonic() - killed_at
    finally:
        stop_nodes([survivor, victim])
    assert list(result) == [0]
    info = result[0]
    assert info["restart_count"] == 1
    assert (info["world_size"], info["group_world_size"], info["group_rank"]) == (1, 1, 0)
    assert info["sum"] == 1.0
    assert recovered_in < 20, f"re-rendezvous took {recovered_in:.1f} s"


@pytest.mark.timeout(120)
def test_c10d_node_joins_a_running_job_after_a_restart(tmp_path: Path) -> None:
    """Scale-up: the running node restarted once (restart_count 1), the newcomer has 0."""
    endpoint = f"127.0.0.1:{free_port()}"
    common = {
        "devices": "cpu:0",
        "nnodes": "1:2",
        "rdzv_backend": "c10d",
        "rdzv_endpoint": endpoint,
        "rdzv_id": "grow",
        "max_restarts": 1,
    }
    first = start_node(tmp_path, "first", "grow", rdzv_configs=f"{ELASTIC},is_host=1", **common)
    nodes = [first]
    try:
        wait_for(
            lambda: flags(tmp_path, "world1-") == ["world1-1-0-0"] or first.proc.poll() is not None,
            RESULT_TIMEOUT_S,
            "the first node to run alone after its restart",
        )
        nodes.append(start_node(tmp_path, "newcomer", "grow", **common, rdzv_configs=ELASTIC))
        results = {node.name: node.ok(RESULT_TIMEOUT_S) for node in nodes}
    finally:
        stop_nodes(nodes)
    merged = {rank: info for result in results.values() for rank, info in result.items()}
    assert sorted(merged) == [0, 1]
    assert [info["restart_count"] for info in results["first"].values()] == [1]
    assert [info["restart_count"] for info in results["newcomer"].values()] == [0]
    for info in merged.values():
        assert (info["world_size"], info["group_world_size"], info["sum"]) == (2, 2, 3.0)


# -- two network namespaces joined by a veth pair: nodes with different addresses ----------


@dataclass(frozen=True)
class Namespace:
    name: str
    address: str
    device: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[tuple[Namespace, Namespace]]:
    """Two network namespaces, 10.213.N.1 and 10.213.N.2, linked by a veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag, subnet = f"{os.getpid()}-{random.randrange(10**6)}", random.randrange(1, 255)
    hosts = tuple(
        Namespace(f"icelaunch-{side}-{tag}", f"10.213.{subnet}.{i}", f"ice{side}{subnet}")
        for i, side in ((1, "a"), (2, "b"))
    )
    a, b = hosts
    created: list[str] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.name)
            created.append(host.name)
            # `ip netns exec` mounts /etc/netns/NAME/* over /etc: no DNS server to wait for
            etc = Path("/etc/netns", host.name)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text("options timeout:1 attempts:1\n")
        _ip(
            *("link", "add", a.device, "netns", a.name, "type", "veth"),
            *("peer", "name", b.device, "netns", b.name),
        )
        for host in hosts:
            _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.device)
            _ip("-n", host.name, "link", "set", host.device, "up")
            _ip("-n", host.name, "link", "set", "lo", "up")
            _ip("netns", "exec", host.name, "true")  # exec needs mount namespaces too
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        _delete_namespaces(created)
        detail = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot create network namespaces here: {exc} {detail.decode()}")
    try:
        yield a, b
    finally:
        _delete_namespaces(created)


def _delete_namespaces(names: list[str]) -> None:
    for name in names:  # deleting a namespace deletes its end of the veth pair
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=10)
        shutil.rmtree(Path("/etc/netns", name), ignore_errors=True)
    with contextlib.suppress(OSError):
        Path("/etc/netns").rmdir()  # only when empty: we made it, nobody else uses it


def _on_host(host: Namespace) -> dict[str, Any]:
    # gloo binds to the address its hostname resolves to, loopback here: name the device
    return {"netns": host.name, "env": {"GLOO_SOCKET_IFNAME": host.device}}


@pytest.mark.timeout(90)
def test_static_nodes_with_different_addresses(
    tmp_path: Path, two_hosts: tuple[Namespace, Namespace]
) -> None:
    a, b = two_hosts
    common = {"devices": "cpu:0-1", "nnodes": "2", "master_addr": a.address, "master_port": 29500}
    nodes = [
        start_node(tmp_path, "a", node_rank=0, **common, **_on_host(a)),
        start_node(tmp_path, "b", node_rank=1, **common, **_on_host(b)),
    ]
    results, _ = results_of(nodes, RESULT_TIMEOUT_S)
    assert [sorted(r) for r in results] == [[0, 1], [2, 3]]
    for result in results:
        for info in result.values():
            assert (info["world_size"], info["sum"], info["master_addr"]) == (4, 10.0, a.address)


@pytest.mark.timeout(90)
def test_c10d_nodes_with_different_addresses(
    tmp_path: Path, two_hosts: tuple[Namespace, Namespace]
) -> None:
    """``local_addr`` names the address other nodes reach this one at (torchrun's
    --local-addr); without it torch publishes ``socket.getfqdn()``, ``localhost`` here."""
    a, b = two_hosts
    common = {
        "devices": "cpu:0",
        "nnodes": "2",
        "rdzv_backend": "c10d",
        "rdzv_endpoint": f"{a.address}:29400",
        "rdzv_id": "two-hosts",
    }
    configs = "join_timeout=30,read_timeout=30,is_host={},local_addr={}"
    nodes = [
        start_node(
            tmp_path, "a", **common, rdzv_configs=configs.format(1, a.address), **_on_host(a)
        ),
        start_node(
            tmp_path, "b", **common, rdzv_configs=configs.format(0, b.address), **_on_host(b)
        ),
    ]
    _results, merged = results_of(nodes, RESULT_TIMEOUT_S)
    assert sorted(merged) == [0, 1]
    for info in merged.values():
        assert (info["world_size"], info["sum"]) == (2, 3.0)
        assert info["master_addr"] in (a.address, b.address)
