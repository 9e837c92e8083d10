"""Worker-side set-up that every worker runs first: launched functions and scripts alike.

``_worker.run`` (functions) and ``_script`` (scripts run by the ``icelaunch``
command) call :func:`bootstrap_common` before any user code. A capability that
needs a few lines inside every worker adds one call here.
"""

from __future__ import annotations

from icelaunch import _console, _diagnosis


def bootstrap_common() -> None:
    """Prepare this worker process; safe to call once per process, before user code."""
    _console.attach()  # fds 1 and 2 become this rank's relayed stdout and stderr
    _diagnosis.setup_worker_from_env()  # stacks on request, Python stack at native crashes
