"""etcd rendezvous (``etcd-v2`` and the legacy ``etcd``) against a real etcd server.

``make test`` installs Debian's etcd-server (3.4, run here with ``--enable-v2``)
and PyPI's python-etcd; without them these tests skip.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import all_reduce_sum, results_of, start_node, timed_out_clearly, wait_for
from icelaunch import ElasticLauncher, RendezvousClosedError
from icelaunch._engine._ports import free_port

pytestmark = [pytest.mark.slow]

RESULT_TIMEOUT_S = 60
ETCD_START_TIMEOUT_S = 20
BACKENDS = ["etcd-v2", "etcd"]


def _healthy(client_url: str) -> bool:
    url = f"{client_url}/v2/keys/"
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
        return bool(reply.status == 200)
    return False


@pytest.fixture
def etcd() -> Iterator[str]:
    """A private etcd server (v2 API on) on free loopback ports; yields its ``host:port``."""
    pytest.importorskip("etcd", reason="python-etcd is not installed (make test installs it)")
    exe = shutil.which("etcd")
    if exe is None:
        pytest.skip("no etcd server on PATH (make test installs Debian's etcd-server)")
    client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    data_dir = tempfile.mkdtemp(prefix="icelaunch-etcd-")
    log = Path(data_dir, "etcd.log")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                exe,
                *("--name", "icelaunch-test", "--data-dir", f"{data_dir}/data"),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", f"icelaunch-test={peer}", "--enable-v2"),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: _healthy(client) or proc.poll() is not None,
            ETCD_START_TIMEOUT_S,
            f"etcd to serve {client}",
        )
        assert proc.poll() is None, f"etcd exited:\n{log.read_text(errors='replace')[-3000:]}"
        yield client.removeprefix("http://")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_nodes_over_etcd(tmp_path: Path, etcd: str, backend: str) -> None:
    common = {
        "devices": "cpu:0",
        "nnodes": "2",
        "rdzv_backend": backend,
        "rdzv_endpoint": etcd,
        "rdzv_id": f"pair-{backend}",
    }
    nodes = [start_node(tmp_path, f"node{i}", **common) for i in range(2)]
    _results, merged = results_of(nodes, RESULT_TIMEOUT_S)
    assert sorted(merged) == [0, 1]
    for rank, info in merged.items():
        assert (info["group_rank"], info["world_size"], info["sum"]) == (rank, 2, 3.0)
        assert info["rdzv_id"] == f"pair-{backend}"


@pytest.mark.timeout(120)
def test_etcd_v2_job_restarts_on_both_nodes(tmp_path: Path, etcd: str) -> None:
    common = {
        "devices": "cpu:0",
        "nnodes": "2",
        "rdzv_backend": "etcd-v2",
        "rdzv_endpoint": etcd,
        "rdzv_id": "restart",
        "max_restarts": 1,
        "rdzv_configs": "join_timeout=40",
    }
    nodes = [start_node(tmp_path, f"node{i}", "fail_once", **common) for i in range(2)]
    _results, merged = results_of(nodes, RESULT_TIMEOUT_S)
    assert sorted(merged) == [0, 1]
    for info in merged.values():
        assert (info["restart_count"], info["world_size"], info["sum"]) == (1, 2, 3.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reusing_a_finished_rdzv_id_says_to_choose_a_new_one(etcd: str, backend: str) -> None:
    def launcher(rdzv_id: str) -> ElasticLauncher:
        return ElasticLauncher(
            "cpu",
            nnodes="1",
            rdzv_backend=backend,
            rdzv_endpoint=etcd,
            rdzv_id=rdzv_id,
            monitor_interval=0.5,
        ).freeze()

    first = launcher("once")
    assert first(all_reduce_sum, first) == {0: 1.0}
    again = launcher("once")
    with pytest.raises(RendezvousClosedError) as info:
        again(all_reduce_sum, again)
    message = str(info.value)
    assert f"rdzv_backend={backend!r}, endpoint {etcd!r}, rdzv_id 'once'" in message
    assert "a run with this rdzv_id has already finished" in message
    assert "Choose a new rdzv_id for every run, e.g. rdzv_id='once-2'" in message
    fresh = launcher("once-2")
    assert fresh(all_reduce_sum, fresh) == {0: 1.0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("backend", "key"), [("etcd-v2", "join_timeout"), ("etcd", "timeout")])
def test_a_missing_node_times_out_clearly(etcd: str, backend: str, key: str) -> None:
    launcher = ElasticLauncher(
        "cpu",
        nnodes="2",
        rdzv_backend=backend,
        rdzv_endpoint=etcd,
        rdzv_id="alone",
        rdzv_configs="timeout=3",
        monitor_interval=0.5,
    ).freeze()
    timed_out_clearly(launcher, backend, etcd, "alone", key)
