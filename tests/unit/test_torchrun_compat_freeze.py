"""torchrun compatibility decided at freeze: process_group, the run id (no launch)."""

from __future__ import annotations

import pytest

from icelaunch import ElasticLauncher
from icelaunch._engine import _setup

pytestmark = pytest.mark.timeout(120)


def test_process_group_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="process_group must be bool, not 'no'"):
        ElasticLauncher("cpu", process_group="no").freeze()


def test_a_multi_node_launch_keeps_the_given_run_id() -> None:
    spec = ElasticLauncher("cpu", nnodes="2", master_port=29500).freeze().spec
    assert _setup.run_id_of(spec) == "none"
    single = ElasticLauncher("cpu").freeze().spec
    assert _setup.run_id_of(single) != _setup.run_id_of(single)
