"""A static rendezvous waiting for other nodes says so every 30 s, instead of silence.

torch's static rendezvous blocks in C++ (node 0's store waits for every node to
connect, the others retry until it listens) and logs nothing meanwhile. A thread
beside it connects its own client to the store (one that does not count as a
node), marks this node present, and logs which nodes are missing, the endpoint
and the time left, until every node is there or the rendezvous ends.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from torch.distributed.elastic.rendezvous import RendezvousParameters

logger = logging.getLogger(__name__)

LOG_INTERVAL_S = 30.0
_PROBE_INTERVAL_S = 1.0
_PROBE_TIMEOUT = datetime.timedelta(seconds=2)
DEFAULT_TIMEOUT_S = 900


@contextlib.contextmanager
def logged(params: RendezvousParameters, interval: float | None = None) -> Iterator[None]:
    """While the block runs, log every ``interval`` s (default ``LOG_INTERVAL_S``) the
    nodes a static rendezvous waits for."""
    interval = interval or LOG_INTERVAL_S
    if params.backend != "static" or params.max_nodes <= 1:
        yield
        return
    stop = threading.Event()
    watcher = _Watcher(params, interval, stop)
    thread = threading.Thread(target=watcher.run, name="icelaunch-rendezvous-wait", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def presence_key(run_id: str, node_rank: int) -> str:
    """The store key that says node ``node_rank`` has reached the rendezvous."""
    return f"icelaunch/present/{run_id}/{node_rank}"


class _Watcher:
    """Marks this node present and logs the missing ones; owned by :func:`logged`."""

    def __init__(self, params: RendezvousParameters, interval: float, stop: threading.Event):
        self.params = params
        self.interval = interval
        self.stop = stop
        self.node_rank = int(params.config.get("rank", 0))
        self.nodes = params.max_nodes
        host, _, port = params.endpoint.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        timeout = float(params.config.get("timeout", DEFAULT_TIMEOUT_S))
        self.deadline = time.monotonic() + timeout
        self.store: Any = None

    def run(self) -> None:
        next_log = time.monotonic() + self.interval
        while not self.stop.wait(min(_PROBE_INTERVAL_S, self.interval)):
            missing = self._missing()
            if missing == []:
                return
            if time.monotonic() >= next_log:
                next_log += self.interval
                self._log(missing)

    def _missing(self) -> list[int] | None:
        """Node ranks not there yet; None while the store cannot be reached."""
        try:
            if self.store is None:
                self.store = self._connect()
                self.store.set(presence_key(self.params.run_id, self.node_rank), "1")
            keys = [presence_key(self.params.run_id, r) for r in range(self.nodes)]
            return [r for r, key in enumerate(keys) if not self.store.check([key])]
        except Exception:  # not listening yet, or gone: the rendezvous itself reports errors
            self.store = None
            return None

    def _connect(self) -> Any:
        from torch.distributed import TCPStore  # type: ignore[attr-defined]

        return TCPStore(
            self.host,
            self.port,
            is_master=False,
            timeout=_PROBE_TIMEOUT,
            wait_for_workers=False,
        )

    def _log(self, missing: list[int] | None) -> None:
        left = max(0, round(self.deadline - time.monotonic()))
        endpoint = f"{self.host}:{self.port}"
        if missing is None:
            logger.warning(
                "icelaunch: node %d of %d is waiting for node 0's store at %s (not reachable "
                "yet; start node 0 with master_addr/master_port naming it); %d s left",
                self.node_rank,
                self.nodes,
                endpoint,
                left,
            )
            return
        logger.warning(
            "icelaunch: node %d of %d is waiting for node(s) %s at %s (static rendezvous, "
            "rdzv_id %r); %d s left",
            self.node_rank,
            self.nodes,
            ", ".join(map(str, missing)),
            endpoint,
            self.params.run_id,
            left,
        )
