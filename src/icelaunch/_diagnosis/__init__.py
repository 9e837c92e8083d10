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
                                                  OOM counters -> raises Stopped (the engine
                                                  turns it into LaunchTimeoutError), causes

``A`` is the attempt (restart count), ``L`` the local rank; the files live in
the launch's run folder (``_rundir``), under the job folder ``icelaunch_<pid>_*``
in the temp directory, which is how ``icelaunch stacks`` finds running launches.

A leaf: it needs only ``_rundir`` below it. The engine turns what it finds into
errors (``_engine/_report``); the command line shows it (``cli/_stacks``).
"""

from __future__ import annotations

from icelaunch._diagnosis._collect import ready_ranks, take
from icelaunch._diagnosis._format import group, group_texts, stack_text
from icelaunch._diagnosis._watch import Stopped, Watch
from icelaunch._diagnosis._worker_side import setup_worker, without_bootstrap_frames
from icelaunch._rundir import STACK_SIGNAL

__all__ = [
    "STACK_SIGNAL",
    "Stopped",
    "Watch",
    "group",
    "group_texts",
    "ready_ranks",
    "setup_worker",
    "stack_text",
    "take",
    "without_bootstrap_frames",
]
