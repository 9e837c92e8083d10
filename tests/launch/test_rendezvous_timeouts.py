"""Multi-node rendezvous from one launcher in the test process: the timeout error of a
node that never comes, and a c10d rdzv_id used again."""

from __future__ import annotations

import pytest

from helpers import (
    all_reduce_sum,
    timed_out_clearly,
)
from icelaunch import ElasticLauncher
from icelaunch._engine._ports import free_port

pytestmark = [pytest.mark.slow]


TIMEOUT_CASES = [
    pytest.param("static", "timeout=3", "timeout", id="static"),
    pytest.param("c10d", "timeout=3", "join_timeout", id="c10d-timeout"),
    pytest.param("c10d", "join_timeout=3", "join_timeout", id="c10d-join_timeout"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("backend", "configs", "key"), TIMEOUT_CASES)
def test_a_missing_node_gives_a_clear_timeout_error(backend: str, configs: str, key: str) -> None:
    port = free_port()
    launcher = ElasticLauncher(
        "cpu",
        nnodes="2",
        rdzv_backend=backend,
        rdzv_endpoint="" if backend == "static" else f"127.0.0.1:{port}",
        master_port=port,
        rdzv_id="lonely",
        rdzv_configs=configs,
        monitor_interval=0.5,
    ).freeze()
    message = timed_out_clearly(launcher, backend, f"127.0.0.1:{port}", "lonely", key)
    assert f"rdzv_configs='{key}=900'" in message


@pytest.mark.timeout(60)
def test_c10d_rdzv_id_can_be_used_again_after_a_run() -> None:
    """A c10d store ends with its launch, so the next run may reuse the id (etcd's may not)."""
    endpoint = f"127.0.0.1:{free_port()}"
    for _ in range(2):
        launcher = ElasticLauncher(
            "cpu", nnodes="1", rdzv_backend="c10d", rdzv_endpoint=endpoint, rdzv_id="again"
        ).freeze()
        assert launcher(all_reduce_sum, launcher) == {0: 1.0}
