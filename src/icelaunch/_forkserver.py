"""How worker processes start: plain multiprocessing, or the warm fork server.

Imports no torch, so :func:`warm_up` can run before the program imports it.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

from icelaunch._spec import LaunchSpec

PRELOAD = ["icelaunch._preload"]


def uses_fork_server(spec: LaunchSpec) -> bool:
    """Whether workers of ``spec`` are forked by multiprocessing's fork server."""
    return spec.start_method == "forkserver" or (spec.start_method == "spawn" and spec.warm_start)


def torch_start_method(spec: LaunchSpec) -> str:
    """The start method handed to torch: ``spawn`` becomes the warm fork server."""
    return "forkserver" if uses_fork_server(spec) else spec.start_method


def warm_up(spec: LaunchSpec | None = None) -> None:
    """Start the fork server now; it imports torch while the launcher carries on.

    The server is one per process, kept between launches, and ends with the
    process; it runs none of the caller's code and never initialises CUDA.
    """
    if spec is not None and not uses_fork_server(spec):
        return
    if spec is None or spec.warm_start:
        multiprocessing.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
