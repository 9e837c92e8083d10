"""A static rendezvous waiting for other nodes logs who is missing, where, and the time
left (against an in-process store)."""

from __future__ import annotations

import datetime
import logging
import re

import pytest
from torch.distributed import TCPStore  # type: ignore[attr-defined]
from torch.distributed.elastic.rendezvous import RendezvousParameters

from icelaunch._engine import _waiting
from icelaunch._engine._ports import free_port

pytestmark = pytest.mark.timeout(60)
LOGGER = "icelaunch._engine._waiting"


def params(port: int, node_rank: int, nodes: int = 3) -> RendezvousParameters:
    return RendezvousParameters(
        backend="static",
        endpoint=f"127.0.0.1:{port}",
        run_id="wait-test",
        min_nodes=nodes,
        max_nodes=nodes,
        rank=node_rank,
        timeout=600,
    )


def test_the_log_names_missing_nodes_endpoint_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    server = TCPStore(
        "127.0.0.1",
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=30),
    )
    server.set(_waiting.presence_key("wait-test", 2), "1")  # node 2 is there already
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        _waiting.logged(params(port, 0), interval=0.3),
    ):
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=30)
        while not caplog.records and datetime.datetime.now() < deadline:
            threading_wait(0.1)
    message = caplog.records[0].getMessage()
    assert "node 0 of 3 is waiting for node(s) 1 at 127.0.0.1:" + str(port) in message
    assert re.search(r"; (59\d|600) s left", message), message
    assert server.check([_waiting.presence_key("wait-test", 0)])  # it marked itself


def test_nothing_is_logged_once_every_node_is_there(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    server = TCPStore(
        "127.0.0.1",
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=30),
    )
    for rank in (1, 2):
        server.set(_waiting.presence_key("wait-test", rank), "1")
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        _waiting.logged(params(port, 0), interval=0.3),
    ):
        threading_wait(1.5)
    assert caplog.records == []


def test_a_node_that_cannot_reach_node_0_says_so(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        _waiting.logged(params(port, 1, nodes=2), interval=0.3),
    ):
        threading_wait(3)
    message = caplog.records[0].getMessage()
    assert f"node 1 of 2 is waiting for node 0's store at 127.0.0.1:{port}" in message


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)
