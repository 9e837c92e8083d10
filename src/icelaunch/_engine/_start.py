"""How worker processes start: plain multiprocessing, or the warm fork server."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver

from icelaunch._spec import LaunchSpec

WARM_MODULES = ["icelaunch._warm"]


def uses_fork_server(spec: LaunchSpec) -> bool:
    """Whether workers of ``spec`` are forked by multiprocessing's fork server."""
    return spec.start_method == "forkserver" or (spec.start_method == "spawn" and spec.warm_start)


def torch_start_method(spec: LaunchSpec) -> str:
    """The start method handed to torch: ``spawn`` becomes the warm fork server."""
    return "forkserver" if uses_fork_server(spec) else spec.start_method


def warm_up(spec: LaunchSpec) -> None:
    """Start the fork server now (it imports torch while the launcher sets up).

    The server is one per process, kept between launches, and ends with the
    process; it runs none of the caller's code and never initialises CUDA.
    """
    if not uses_fork_server(spec):
        return
    if spec.warm_start:
        multiprocessing.set_forkserver_preload(WARM_MODULES)
    multiprocessing.forkserver.ensure_running()
