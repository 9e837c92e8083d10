"""A single-node job listens on loopback only: the job's listening sockets, listed live."""

from __future__ import annotations

import ipaddress
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch.distributed as dist

from icelaunch import ElasticLauncher

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def hold(launcher: ElasticLauncher, tmp: str) -> int:
    dist.barrier()  # the process group (and every store) is up
    Path(tmp, f"up-{launcher.rank}").write_text("")
    deadline = time.monotonic() + 120
    while not Path(tmp, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def _listening() -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket that this process and its descendants listen on."""
    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found.append((proc.pid, c.laddr.ip, c.laddr.port))
    return found


@pytest.mark.parametrize("kwargs", [{}, {"standalone": True}], ids=["default", "standalone"])
def test_single_node_job_listens_on_loopback_only(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5, **kwargs).freeze()
    results: list[Any] = []
    thread = threading.Thread(
        target=lambda: results.append(launcher(hold, launcher, str(tmp_path)))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("up-*"))) < 2:
            assert thread.is_alive() and time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
        sockets = _listening()
    finally:
        (tmp_path / "go").write_text("")
        thread.join(120)
    assert results == [{0: 0, 1: 0}]
    print(f"\nlistening: {sockets}")
    assert sockets, "no listening socket found: the listing is broken"
    wide = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not wide, f"listening beyond loopback: {wide}"
