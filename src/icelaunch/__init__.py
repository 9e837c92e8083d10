"""icelaunch: launch PyTorch distributed jobs from inside Python.

Importing icelaunch does not import torch; the names that need it are loaded
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from icelaunch._config import (
    Configurable,
    clone,
    configurable,
    freeze,
    frozen,
    is_configurable,
    make_configurable,
)
from icelaunch._errors import (
    ConfigurableError,
    FrozenError,
    LaunchInterruptedError,
    LaunchStopped,
    NotFrozenError,
    NotInWorkerError,
    RendezvousClosedError,
    RendezvousTimeoutError,
)

if TYPE_CHECKING:
    from icelaunch._devices import parse_devices
    from icelaunch._engine import LaunchTimeoutError, WorkerFailedError
    from icelaunch._launcher import ElasticLauncher
    from icelaunch._worker import current, init_process_group

__all__ = [
    "Configurable",
    "ConfigurableError",
    "ElasticLauncher",
    "FrozenError",
    "LaunchInterruptedError",
    "LaunchStopped",
    "LaunchTimeoutError",
    "NotFrozenError",
    "NotInWorkerError",
    "RendezvousClosedError",
    "RendezvousTimeoutError",
    "WorkerFailedError",
    "clone",
    "configurable",
    "current",
    "freeze",
    "frozen",
    "init_process_group",
    "is_configurable",
    "make_configurable",
    "parse_devices",
    "wait_teardown",
    "warm_up",
]

__version__ = "0.1.0"


def warm_up() -> None:
    """Start the fork server that ``spawn`` workers come from, ahead of the first launch.

    Optional. Call it first thing in the main block, before importing torch, and
    the server imports torch in parallel with your program instead of during the
    first launch::

        if __name__ == "__main__":
            icelaunch.warm_up()
            import torch
            ...
    """
    from icelaunch import _engine

    _engine.warm_up()


def wait_teardown(timeout: float | None = None) -> bool:
    """Wait until earlier launches have finished; True when nothing of them is left.

    A successful launch returns as soon as every rank's value is in. Its workers
    then end on their own (destroying their process groups), anything they left
    running is stopped and the launch's temp folder removed, in the background;
    a launch on CUDA devices and the end of the interpreter wait for that. Call
    this where a program must know that no worker process is left (measuring
    memory, a test).

    Args:
        timeout: seconds to wait at most; None waits until all is done.
    """
    from icelaunch import _engine

    return _engine.wait_teardown(timeout)


_LAZY = {
    "ElasticLauncher": "icelaunch._launcher",
    "WorkerFailedError": "icelaunch._engine",
    "LaunchTimeoutError": "icelaunch._engine",
    "current": "icelaunch._worker",
    "init_process_group": "icelaunch._worker",
    "parse_devices": "icelaunch._devices",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'icelaunch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
