"""A launch waiting alone for a second node logs while it waits."""

from __future__ import annotations

import logging

import pytest

from icelaunch import ElasticLauncher, RendezvousTimeoutError
from icelaunch._engine import _waiting
from icelaunch._engine._ports import free_port

pytestmark = pytest.mark.timeout(60)
LOGGER = "icelaunch._engine._waiting"


def test_a_lonely_node_logs_while_it_waits(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_waiting, "LOG_INTERVAL_S", 0.5)
    port = free_port()
    launcher = ElasticLauncher(
        "cpu", nnodes="2", master_port=port, rdzv_configs="timeout=4", rdzv_id="lonely"
    ).freeze()
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(RendezvousTimeoutError):
        launcher(print)
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages, "no waiting log"
    assert f"node 0 of 2 is waiting for node(s) 1 at 127.0.0.1:{port}" in messages[0]
    assert "rdzv_id 'lonely'" in messages[0]
