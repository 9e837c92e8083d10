"""Both ends of the ranks' own stack samples: a thread in each rank, files the launcher reads.

Signals cannot sample a job often: every handled signal interrupts the rank's
system calls, and gloo's transport does not survive that reliably (a rank
signalled 200 times a second crashes within seconds, a no-op Python handler
as much as faulthandler's). So while the launcher samples (the run folder's
``sampling`` file names the interval), each rank runs one daemon thread that
wakes at every multiple of the interval on the machine's monotonic clock (the
ranks of a node look at the same moments), reads its main thread's state from
``/proc/self/task``, takes the main thread's Python frames
(``sys._current_frames``) and replaces ``sample-A-L.txt``::

    <monotonic time> <state letter>
    <file>\\t<line>\\t<function>        one line per frame, outermost first

No signal is sent: the rank's work is never interrupted; the thread needs the
GIL for about 0.1 ms per sample.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

from icelaunch import _rundir
from icelaunch._diagnosis._format import Frame, Thread
from icelaunch._rundir import Identity

MIN_INTERVAL_S = 0.05
_MAX_FRAMES = 200


def sampling_interval(run_dir: str) -> float | None:
    """The interval the launcher asks for in ``run_dir``, None if it does not sample."""
    try:
        with open(_rundir.sampling_path(run_dir)) as fh:
            interval = float(fh.read().strip())
    except (OSError, ValueError):
        return None
    return max(interval, MIN_INTERVAL_S) if math.isfinite(interval) else None


def start_sampler(run_dir: str, who: Identity, interval: float) -> None:
    """Start this rank's sampling thread (a daemon: it never keeps the rank alive)."""
    main = threading.main_thread()
    path = _rundir.sample_path(run_dir, who.attempt, who.local_rank)
    tid, ident = main.native_id, main.ident
    if tid is None or ident is None:
        return

    def loop() -> None:
        while True:
            now = time.monotonic()
            time.sleep((math.floor(now / interval) + 1) * interval - now)
            if not _write(path, tid, ident):
                return  # the run folder is gone: the launch ended

    threading.Thread(target=loop, name="icelaunch-sampler", daemon=True).start()


def _write(path: str, tid: int, ident: int) -> bool:
    state = _thread_state(tid)
    frame = sys._current_frames().get(ident)
    lines = [f"{time.monotonic():.4f} {state}"]
    while frame is not None and len(lines) <= _MAX_FRAMES:
        code = frame.f_code
        lines.append(f"{code.co_filename}\t{frame.f_lineno}\t{code.co_name}")
        frame = frame.f_back
    del frame
    body = lines[0] + "\n" + "\n".join(reversed(lines[1:])) + "\n"
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(body)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def _thread_state(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


@dataclass(frozen=True)
class RankSample:
    """A rank's latest look at its main thread."""

    t: float  # time.monotonic() of the look (the machine's clock: comparable across ranks)
    state: str  # the main thread's state letter (R running, S/D waiting, ...)
    frames: Thread  # outermost first


def read_sample(run_dir: str, attempt: int, local_rank: int) -> RankSample | None:
    """The rank's latest sample, None if there is none (yet)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(_rundir.sample_path(run_dir, attempt, local_rank)) as fh:
            head, *rest = fh.read().splitlines()
        t_text, state = head.split()
        frames = []
        for line in rest:
            file, lineno, function = line.split("\t")
            frames.append(Frame(file, int(lineno) if lineno.isdigit() else 0, function))
        return RankSample(float(t_text), state, tuple(frames))
    return None
