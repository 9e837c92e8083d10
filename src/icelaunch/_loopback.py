"""TCPStore servers that listen on one address only, for jobs that stay on one node.

Used by the engine (the rendezvous store) and the worker side (a one-node
round's store hosted by worker rank 0).

torch's ``TCPStore`` listens on every interface; given a socket we bound
ourselves (``master_listen_fd``) it listens where that socket does.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

LOOPBACK = "127.0.0.1"
DEFAULT_TIMEOUT = datetime.timedelta(seconds=300)  # torch's default store timeout


def loopback_store(host: str, port: int, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Any:
    """A TCPStore server listening on ``host`` only (``127.0.0.1`` for a one-node job).

    Raises:
        OSError: the port is taken (``EADDRINUSE``).
    """
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    fd = sock.detach()  # the store owns and closes it
    return TCPStore(
        host, port, 1, True, timeout, wait_for_workers=False, master_listen_fd=fd, use_libuv=True
    )
