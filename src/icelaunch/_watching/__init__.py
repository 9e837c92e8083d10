"""Watching a running job: samples of its ranks, the slow rank named, the run report.

Data flow::

    engine's Agent (every 0.5 s)                    _monitor.Monitor
    ----------------------------                    ----------------
    running ranks (pid), ranks up  ----> check():   _sampler: /proc (state, CPU, memory; no
                                                    signal), and the ranks' own samples
                                                    (_diagnosis: where each one is, how often
                                                    it waited in a collective)
                                                      -> _slow.Detector: the rank that waits
                                                         far less than all the others, who
                                                         wait for it -> WARNING + finding
                                                      -> _record.Recorder: states, peaks
                                                      -> _live: <job>/live.json (icelaunch top)
    workers started/up/ended, restarts,
    stacks at a stop, the outcome   ---------->     _record.Recorder -> report(): the run
                                                    report (report.schema.json), write():
                                                    atomically to report=PATH
    cli: `icelaunch top` reads _live (or samples itself); `icelaunch report` reads a report.

A room of level 4: it builds on ``_diagnosis`` (stacks, ``/proc``) and ``_rundir``.
"""

from __future__ import annotations

from icelaunch._watching._gpu import GpuReader, GpuUse
from icelaunch._watching._live import publish, read
from icelaunch._watching._monitor import Monitor
from icelaunch._watching._record import SCHEMA, VERSION, Recorder, write
from icelaunch._watching._sampler import (
    SAMPLE_INTERVAL_S,
    Member,
    RankLook,
    Row,
    Sample,
    Sampler,
    Tracker,
)
from icelaunch._watching._slow import Detector, Finding

__all__ = [
    "SAMPLE_INTERVAL_S",
    "SCHEMA",
    "VERSION",
    "Detector",
    "Finding",
    "GpuReader",
    "GpuUse",
    "Member",
    "Monitor",
    "RankLook",
    "Recorder",
    "Row",
    "Sample",
    "Sampler",
    "Tracker",
    "publish",
    "read",
    "write",
]
