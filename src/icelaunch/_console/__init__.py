"""The console relay: worker output -> the launcher's stdout/stderr and log files.

Used by the engine; knows nothing of rendezvous or torch. Launcher side:
:class:`Relay` (one thread, per-rank prefixes, ``\\r``-aware, terminals for
terminals). Worker side: :func:`attach`, called first thing in every worker.

Data flow::

    worker fd 1/2 --pty or pipe--> Relay thread --prefixed--> launcher stdout/stderr
                                               \\--raw bytes--> <rank dir>/stdout.log, stderr.log
"""

from __future__ import annotations

from icelaunch._console._attach import attach
from icelaunch._console._early import WorkerMark, wrap_spawn_main
from icelaunch._console._relay import Relay, Routes, new_address

__all__ = [
    "Relay",
    "Routes",
    "WorkerMark",
    "attach",
    "new_address",
    "wrap_spawn_main",
]
