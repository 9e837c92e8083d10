"""Rendezvous handlers whose stores listen where they should and whose waits answer Ctrl-C.

- A single-node launch (``static`` with one node, or ``standalone``) listens on
  ``master_addr`` only (``127.0.0.1`` by default), never on every interface:
  we bind the socket and hand it to torch's ``TCPStore(master_listen_fd=...)``.
- A static multi-node rendezvous waits for the other nodes in short, bounded
  steps in Python, so Ctrl-C is answered within a second, not when torch's
  ``timeout`` (default 900 s) runs out.

Multi-node stores (``static``, ``c10d``) keep listening on every interface,
without authentication: they belong on a trusted network.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousParameters
from torch.distributed.elastic.rendezvous import api as torch_rdzv
from torch.distributed.elastic.rendezvous import registry as rdzv_registry
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    create_handler as create_dynamic_handler,
)
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

from icelaunch import _torch_internals
from icelaunch._engine import _ports
from icelaunch._loopback import loopback_store

STEP_S = 0.5  # longest uninterruptible wait
_JOINED = "icelaunch/nodes_joined"
_ALL_JOINED = "icelaunch/all_nodes_joined"


def create_handler(params: RendezvousParameters, port: int, standalone: bool) -> RendezvousHandler:
    """The rendezvous handler of one launch; a taken port raises ``PortBusyError``."""
    try:
        if standalone:
            return _standalone_handler(params)
        handler = rdzv_registry.get_rendezvous_handler(params)
        if isinstance(handler, StaticTCPRendezvous):
            return _InterruptibleStatic.of(handler)
        return handler
    except Exception as exc:
        busy = _ports.as_port_busy(exc, port)
        if busy is exc:
            raise
        raise busy from exc


def _standalone_handler(params: RendezvousParameters) -> RendezvousHandler:
    host, _, port = params.endpoint.rpartition(":")
    timeout = datetime.timedelta(seconds=int(params.config.get("timeout", 900)))
    store = loopback_store(host, int(port), timeout)
    backend = C10dRendezvousBackend(store, params.run_id)
    return create_dynamic_handler(store, backend, params)


class _InterruptibleStatic(StaticTCPRendezvous):
    """torch's static rendezvous, with a store we create and a wait in short steps."""

    @classmethod
    def of(cls, torch_handler: StaticTCPRendezvous) -> _InterruptibleStatic:
        h = torch_handler
        seconds = int(h.timeout.total_seconds())
        return cls(h.master_addr, h.master_port, h.rank, h.world_size, h.run_id, seconds)

    def next_rendezvous(self) -> Any:
        if _torch_internals.static_store(self) is None:  # restarts reuse it, as torch does
            deadline = time.monotonic() + self.timeout.total_seconds()
            store = self._make_store(deadline)
            _torch_internals.set_static_store(self, store)
            _wait_for_nodes(PrefixStore(self.run_id, store), self.world_size, deadline)
        return super().next_rendezvous()

    def _make_store(self, deadline: float) -> TCPStore:
        if self.world_size == 1:
            store: TCPStore = loopback_store(self.master_addr, self.master_port, self.timeout)
            return store
        if self.rank == 0:
            return TCPStore(
                self.master_addr,
                self.master_port,
                self.world_size,
                True,
                self.timeout,
                wait_for_workers=False,
                multi_tenant=True,
            )
        step = datetime.timedelta(seconds=STEP_S)
        while True:
            try:
                store = TCPStore(self.master_addr, self.master_port, self.world_size, False, step)
            except (RuntimeError, ValueError) as exc:  # DistNetworkError / DistStoreError
                if time.monotonic() > deadline:
                    raise torch_rdzv.RendezvousTimeoutError(str(exc)) from exc
                continue
            store.set_timeout(self.timeout)
            return store


def _wait_for_nodes(store: Any, world_size: int, deadline: float) -> None:
    """Return once ``world_size`` nodes have joined; wait in steps that answer Ctrl-C."""
    if store.add(_JOINED, 1) >= world_size:
        store.set(_ALL_JOINED, "1")
    step = datetime.timedelta(seconds=STEP_S)
    while True:
        try:
            store.wait([_ALL_JOINED], step)
            return
        except RuntimeError as exc:  # DistStoreError: not yet
            if "timeout" not in str(exc).lower() and "timed out" not in str(exc).lower():
                raise
            if time.monotonic() > deadline:
                raise torch_rdzv.RendezvousTimeoutError(str(exc)) from exc
