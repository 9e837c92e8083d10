"""Diagnosis: where every rank is when a launch stops, and why a rank died.

Data flow::

    worker (bootstrap calls setup_worker)         launcher (engine's Agent, `icelaunch stacks`)
    ------------------------------------          ------------------------------------------
    faulthandler.enable -> crash-A-L.txt   ---->  native crash: Python stack in the rank's report
    faulthandler.register(STACK_SIGNAL)           take(): STACK_SIGNAL to each ready rank, read
        -> stacks-A-L.txt (appended)       ---->  its dump, bounded to about 1 s for all ranks
    stacks-A-L.pid: "pid start-time rank"  ---->  which processes may be signalled (never a
                                                  stranger that reused a pid)
                                                  group(): identical stacks once, odd ones first
                                                  Watch: timeout, hang_timeout, memory peaks,
                                                  OOM counters -> LaunchTimeoutError, causes

``A`` is the attempt (restart count), ``L`` the local rank; the files live in
the launch's run folder under the job folder ``icelaunch_<pid>_*`` in the
temp directory, which is how ``icelaunch stacks`` finds running launches.
"""

from __future__ import annotations

from icelaunch._diagnosis._files import RUN_DIR_ENV
from icelaunch._diagnosis._worker_side import (
    STACK_SIGNAL,
    setup_worker,
    setup_worker_from_env,
    without_bootstrap_frames,
)

__all__ = [
    "RUN_DIR_ENV",
    "STACK_SIGNAL",
    "setup_worker",
    "setup_worker_from_env",
    "without_bootstrap_frames",
]
