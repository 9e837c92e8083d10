"""Diagnosis: where every rank is when a launch stops, and why a rank died.

Data flow::

    worker (bootstrap calls setup_worker)         launcher (engine's Agent, `icelaunch stacks`)
    ------------------------------------          ------------------------------------------
    faulthandler.enable -> crash-A-L.txt   ---->  crash_stack(): native crash, Python stack in
      (or stderr, if the program enables it)      the rank's report (crash file, else stderr)
    faulthandler.register(STACK_SIGNAL)           take()/ask(): SIGURG to each rank whose
        -> stacks-A-L.txt (appended)       ---->  handler is in place (ready file + SigCgt in
    stacks-A-L.sigurg: "pid start rank"    ---->  /proc: never a stranger that reused a pid,
                                                  never a program that replaced it by exec),
                                                  read its dump, about 1 s for all ranks;
                                                  why_silent(): a note for each that gave none
                                                  group(): identical stacks once, odd ones first
    while <run>/sampling exists: a thread  ---->  read_sample(): where each rank's main thread
      looks at the main thread 10 times a s,      is and how often it waited, no signal sent
      _frames: waiting in a collective or         (_sampling; the watching room's slow-rank
      busy -> sample-A-L.txt (counts, frames)     rule)
    /proc/<pid>/stat, status (CPU time,    ---->  Watch: timeout, hang_timeout (_progress: a
      wake-ups, of the rank and its children)     rank computes or wakes up, else its stack
                                                  changed), memory peaks, OOM counters ->
                                                  raises Stopped (the engine turns it into
                                                  LaunchTimeoutError), causes

``A`` is the attempt (restart count), ``L`` the local rank; the files live in
the launch's run folder (``_rundir``), under the job folder ``icelaunch_<pid>_*``
in the temp directory, which is how ``icelaunch stacks`` finds running launches.

A leaf: it needs only ``_rundir`` below it. The engine turns what it finds into
errors (``_engine/_report``); the command line shows it (``cli/_stacks``).
"""

from __future__ import annotations

from icelaunch._diagnosis._collect import ask, known_ranks, ready_ranks, take, why_silent
from icelaunch._diagnosis._crash import crash_stack
from icelaunch._diagnosis._format import (
    Frame,
    Thread,
    group,
    group_texts,
    is_library,
    parse,
    stack_text,
    user_frames,
    user_threads,
)
from icelaunch._diagnosis._frames import Where, where, where_in
from icelaunch._diagnosis._memory import peak_bytes
from icelaunch._diagnosis._proc import Look, clock_ticks, command_line, look
from icelaunch._diagnosis._sampling import RankSample, Tally, read_sample
from icelaunch._diagnosis._watch import Stopped, Watch
from icelaunch._diagnosis._worker_side import setup_worker, without_bootstrap_frames
from icelaunch._rundir import STACK_SIGNAL

__all__ = [
    "STACK_SIGNAL",
    "Frame",
    "Look",
    "RankSample",
    "Stopped",
    "Tally",
    "Thread",
    "Watch",
    "Where",
    "ask",
    "clock_ticks",
    "command_line",
    "crash_stack",
    "group",
    "group_texts",
    "is_library",
    "known_ranks",
    "look",
    "parse",
    "peak_bytes",
    "read_sample",
    "ready_ranks",
    "setup_worker",
    "stack_text",
    "take",
    "user_frames",
    "user_threads",
    "where",
    "where_in",
    "why_silent",
    "without_bootstrap_frames",
]
