"""The console relay: worker output -> the launcher's stdout/stderr and log files.

Used by the engine; knows nothing of rendezvous or torch. Launcher side:
:class:`Relay` (one thread, per-rank prefixes, ``\\r``-aware, terminals for
terminals). Worker side: :func:`attach`, called first thing in every worker.

    worker fd 1/2 --pty or pipe--> Relay thread --prefixed--> launcher stdout/stderr
                                               \\--raw bytes--> <rank dir>/stdout.log, stderr.log
"""

from __future__ import annotations

from icelaunch._console._attach import ADDRESS_ENV, attach
from icelaunch._console._early import WorkerMark
from icelaunch._console._relay import Relay, Routes, new_address
from icelaunch._console._text import DEFAULT_TEMPLATE, check_template

__all__ = [
    "ADDRESS_ENV",
    "DEFAULT_TEMPLATE",
    "Relay",
    "Routes",
    "WorkerMark",
    "attach",
    "check_template",
    "new_address",
]
