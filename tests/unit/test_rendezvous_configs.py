"""Rendezvous timeouts as torch receives them, validated at freeze (no launch)."""

from __future__ import annotations

import pytest

from icelaunch import ElasticLauncher

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize(
    ("backend", "configs", "expected"),
    [
        ("c10d", "timeout=7", {"timeout": "7", "join_timeout": "7"}),
        ("etcd-v2", "timeout=7,join_timeout=9", {"timeout": "7", "join_timeout": "9"}),
        ("c10d", "last_call_timeout=1,keep_alive_interval=2", {"last_call_timeout": "1"}),
        ("etcd", "timeout=7,last_call_timeout=1", {"timeout": "7", "last_call_timeout": "1"}),
        ("static", "", {"timeout": 900}),
    ],
)
def test_timeouts_reach_torch(backend: str, configs: str, expected: dict[str, object]) -> None:
    """`timeout` also bounds c10d/etcd-v2 (torch reads only join_timeout there)."""
    from icelaunch._engine import _setup

    spec = (
        ElasticLauncher(
            "cpu",
            nnodes="2",
            rdzv_backend=backend,
            rdzv_endpoint="127.0.0.1:1",
            rdzv_configs=configs,
        )
        .freeze()
        .spec
    )
    params, _, _ = _setup.rendezvous_parameters(spec, 29500)
    assert {k: params.config.get(k) for k in expected} == expected
    if "keep_alive_interval" in configs:
        assert params.config["keep_alive_interval"] == "2"


@pytest.mark.parametrize("configs", ["timeout=2.5", "join_timeout=-1", "keep_alive_interval=1e3"])
def test_timeouts_must_be_whole_seconds(configs: str) -> None:
    with pytest.raises(ValueError, match=r"must be a number of seconds, whole \(torch reads"):
        ElasticLauncher("cpu", rdzv_configs=configs).freeze()
