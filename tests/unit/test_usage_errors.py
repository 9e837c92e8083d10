"""Usage errors refused at freeze with one clear line (no launch)."""

from __future__ import annotations

import pytest

from icelaunch import ElasticLauncher
from icelaunch._engine._ports import AGREED_RANGE, agreed_port

pytestmark = pytest.mark.timeout(120)


def test_standalone_with_several_nodes_is_refused_at_freeze() -> None:
    with pytest.raises(ValueError, match=r"invalid nnodes '2' with standalone=True.*c10d"):
        ElasticLauncher(standalone=True, nnodes="2").freeze()
    with pytest.raises(ValueError, match=r"invalid nnodes '1:2' with standalone=True"):
        ElasticLauncher(standalone=True, nnodes="1:2").freeze()
    ElasticLauncher(standalone=True, nnodes="1").freeze()


def test_static_nodes_without_master_port_agree_on_one() -> None:
    """Every node derives the same port from what they are all given alike."""
    nodes = [
        ElasticLauncher("cpu", nnodes="2", node_rank=r, master_addr="10.0.0.1").freeze().spec
        for r in (0, 1)
    ]
    ports = {agreed_port(spec) for spec in nodes}
    assert len(ports) == 1
    port = ports.pop()
    assert port is not None and AGREED_RANGE[0] <= port <= AGREED_RANGE[1]
    assert agreed_port(ElasticLauncher("cpu").freeze().spec) is None
    assert agreed_port(ElasticLauncher("cpu", nnodes="2", master_port=29600).freeze().spec)
