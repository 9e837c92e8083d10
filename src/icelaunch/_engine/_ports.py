"""Free ports for the rendezvous store, and a clear error when one is taken."""

from __future__ import annotations

import hashlib
import random
import socket

from icelaunch._errors import PortBusyError
from icelaunch._spec import LaunchSpec

PORT_RANGE = (16894, 17194)
ATTEMPTS = 8
AGREED_RANGE = (29500, 30499)  # from torchrun's default 29500 on


def free_port(low: int = PORT_RANGE[0], high: int = PORT_RANGE[1]) -> int:
    """A port in ``[low, high]`` that nothing listens on right now (random order)."""
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise PortBusyError(f"every port in {low}-{high} is taken; pass master_port=<a free port>")


def agreed_port(spec: LaunchSpec) -> int | None:
    """The port every node of a static multi-node job without ``master_port`` uses.

    Each node picking a free port of its own would never meet; this one depends only
    on what every node is given alike (``master_addr``, ``rdzv_id``, ``nnodes``).
    None where no such agreement is needed (one node, another backend, an endpoint).
    """
    static = spec.rdzv_backend == "static" and not spec.standalone and not spec.rdzv_endpoint
    if not static or spec.max_nodes == 1:
        return None
    key = f"{spec.master_addr}/{spec.rdzv_id}/{spec.max_nodes}".encode()
    low, high = AGREED_RANGE
    return low + int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % (high - low + 1)


def as_port_busy(exc: BaseException, port: int) -> BaseException:
    """:class:`PortBusyError` naming ``port`` if ``exc`` says the port is taken, else ``exc``."""
    text = str(exc)
    if "EADDRINUSE" not in text and "address already in use" not in text.lower():
        return exc
    return PortBusyError(
        f"port {port} is already in use by another process; choose another master_port "
        f"(e.g. master_port=29501) or leave it None to have icelaunch pick a free one"
    )
