"""The worker side: take this process's stdout and stderr from the launcher's relay."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

from icelaunch._console import _early, _relay
from icelaunch._rundir import CONSOLE_ENV, Identity

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30.0


def attach(who: Identity | None) -> None:
    """Make fds 1 and 2 this worker's relayed stdout and stderr (once, at start).

    Does nothing outside a launch. The environment variable is removed, so the
    worker's own children (or a launch inside it) do not connect again.
    """
    for fd in list(_relay.LAUNCHER_FDS):  # copies a worker forked from the launcher holds
        with contextlib.suppress(OSError):
            os.close(fd)
    _relay.LAUNCHER_FDS.clear()
    address = os.environ.pop(CONSOLE_ENV, None)
    if not address or who is None:
        _early.give_back()
        return
    try:
        fds = _receive(address, who.hello(socket.gethostname(), os.getpid()))
    except (OSError, ValueError) as exc:
        logger.debug("no console relay at %s: %s", address, exc)
        _early.give_back()
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _early.hand_over({1: fds[0], 2: fds[1]})  # what this worker wrote before, first
    for target, fd in zip((1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def _receive(address: str, hello: bytes) -> list[int]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect("\0" + address)
        sock.sendall(hello)
        _, fds, _, _ = socket.recv_fds(sock, 16, 2)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected 2 file descriptors, got {len(fds)}")
    return list(fds)
