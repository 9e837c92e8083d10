"""The engine: the only room that builds on torch.distributed.elastic.

It assembles torch's public pieces (``RendezvousParameters``, the rendezvous
registry, ``WorkerSpec``, ``LocalElasticAgent``, ``DefaultLogsSpecs``) the way
``torch.distributed.launcher.api.launch_agent`` does, with these changes: the
agent wakes up as soon as a worker returns or dies instead of sleeping
``monitor_interval`` seconds, a worker that exits without returning counts as
failed instead of hanging the launch, every failed rank is reported, and the
caller's signal handlers, environment and temp folder are left as they were.

Data flow of one launch::

    _signals.held(): stop signals noted from here on (before torch is imported),
                     raised at the launch's safe points; the caller's handlers after
    _doors.launch(spec, fn, args) / launch_command(spec, argv)
      --Target(entrypoint, args; the workers' environment as data: in the job,
               or in the run folder's worker-env.json)--> _launch.run_launch
          job folder, caller's state kept (_hygiene), port retries (_ports)
          --> _attempt.run_attempt (per run folder)
                WorkerSpec + rendezvous handler (_setup, _stores, _rendezvous, _waiting)
                console Relay + log files (_logs), diagnosis Watch
                _agent.Agent.run(): start (_forkserver), wait on events (_procs),
                                    stop (_stop), restart
                --> values by rank, or _report.failed_error -> WorkerFailedError
          --> after a success: the rest closes in the background (_teardown)

This face imports no torch: the doors are loaded on the first launch.
``icelaunch._torch_internals`` reaches torch's private names for it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icelaunch._engine._failures import LaunchTimeoutError, WorkerFailedError
    from icelaunch._spec import LaunchSpec

__all__ = [
    "LaunchTimeoutError",
    "WorkerFailedError",
    "held_signals",
    "launch",
    "launch_command",
    "wait_teardown",
    "warm_up",
]


def launch(spec: LaunchSpec, fn: Callable[..., Any], args: tuple[Any, ...]) -> dict[int, Any]:
    """Run ``fn(*args)`` in every worker of this node; return values by global rank."""
    from icelaunch._engine import _signals

    with _signals.held() as signals:  # before torch's import, which a Ctrl-C can abort
        from icelaunch._engine import _doors

        return _doors.launch(spec, fn, args, signals)


def launch_command(spec: LaunchSpec, argv: list[str]) -> None:
    """Run the command ``argv`` in every worker of this node."""
    from icelaunch._engine import _signals

    with _signals.held() as signals:
        from icelaunch._engine import _doors

        _doors.launch_command(spec, argv, signals)


def held_signals() -> AbstractContextManager[Any]:
    """Stop signals noted while the block runs, then given to the caller's handlers:
    for work that may import torch, whose import a Ctrl-C can abort (``_signals``)."""
    from icelaunch._engine import _signals

    return _signals.held()


def warm_up() -> None:
    """Start the warm fork server now (imports no torch here; the server does)."""
    from icelaunch._engine import _forkserver

    _forkserver.warm_up()


def wait_teardown(timeout: float | None = None) -> bool:
    """Wait for the background teardown of earlier launches; True when none is left."""
    import sys

    module = sys.modules.get("icelaunch._engine._teardown")
    return True if module is None else bool(module.wait(timeout))


def __getattr__(name: str) -> Any:
    """The error classes, loaded with torch on first use."""
    if name in ("WorkerFailedError", "LaunchTimeoutError"):
        from icelaunch._engine import _failures

        return getattr(_failures, name)
    raise AttributeError(f"module 'icelaunch._engine' has no attribute {name!r}")
