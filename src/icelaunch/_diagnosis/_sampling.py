"""Both ends of the ranks' own stack samples: a thread in each rank, files the launcher reads.

Signals cannot sample a job often: every handled signal interrupts the rank's
system calls, and gloo's transport does not survive that reliably (a rank
signalled 200 times a second crashes within seconds, a no-op Python handler
as much as faulthandler's). So while the launcher samples (the run folder's
``sampling`` file names its interval), each rank runs one daemon thread. It
**looks** at its main thread :data:`LOOKS_PER_SAMPLE` times per interval (at
the multiples of that step on the machine's monotonic clock): the thread's
state (``/proc/self/task``), its Python frames (``sys._current_frames``),
classified by ``_frames`` as waiting in a collective or busy in a user frame,
and **counted**. Once per interval it replaces ``sample-A-L.txt``::

    <monotonic time> <state letter> <looks so far> <frame lines>
    <file>\\t<line>\\t<function>               the latest frames, outermost first
    <count>\\t<w|b>\\t<function>\\t<place>\\t<call>   looks so far, by what they saw

The counts are what the slow-rank rule weighs (each rank's share of time
spent waiting: no look has to coincide with another rank's); the latest
frames serve stalls and ``icelaunch top``. No signal is sent: the rank's work
is never interrupted; a look holds the GIL for some 20 microseconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import FrameType

from icelaunch import _rundir
from icelaunch._diagnosis._format import Frame, Thread
from icelaunch._diagnosis._frames import where_in
from icelaunch._rundir import Identity

MIN_INTERVAL_S = 0.05
#: looks at the main thread per sample written (a look every 0.1 s at the default 0.5 s:
#: 20 a second cost 1.5 % of the step time of a loop on an oversubscribed machine)
LOOKS_PER_SAMPLE = 5
#: distinct places counted at most; later ones are counted without their place
MAX_PLACES = 256
_MAX_FRAMES = 200

#: what a look saw: (waiting, function, place, call); function None: no user frame
Seen = tuple[bool, str | None, str | None, str | None]


@dataclass(frozen=True)
class Tally:
    """A rank's looks at its main thread since it started, by what each saw."""

    looks: int = 0
    seen: dict[Seen, int] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        """Looks that found the main thread waiting in a collective."""
        return sum(n for (waits, *_), n in self.seen.items() if waits)

    def since(self, earlier: Tally) -> Tally:
        """The looks taken after ``earlier`` (a previous tally of the same rank)."""
        seen = {k: n - earlier.seen.get(k, 0) for k, n in self.seen.items()}
        return Tally(self.looks - earlier.looks, {k: n for k, n in seen.items() if n > 0})


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
    step = interval / LOOKS_PER_SAMPLE

    def loop() -> None:
        counter, written = _Counter(tid, ident), -1
        try:
            while True:
                now = time.monotonic()
                tick = math.floor(now / step) + 1
                time.sleep(max(0.0, tick * step - now))
                frames = counter.look()
                if tick // LOOKS_PER_SAMPLE != written:  # a late wake-up still writes
                    written = tick // LOOKS_PER_SAMPLE
                    if not counter.write(path, frames):
                        return  # the run folder is gone: the launch ended
        finally:
            counter.close()

    threading.Thread(target=loop, name="icelaunch-sampler", daemon=True).start()


class _Counter:
    """The sampling thread's state: the main thread's ``stat`` file, the counts."""

    def __init__(self, tid: int, ident: int) -> None:
        self._ident = ident
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        self.looks = 0
        self.state = "?"
        self.seen: Counter[Seen] = Counter()

    def look(self) -> Thread:
        """Look at the main thread once: count what it does; return its frames."""
        self.state = self._state()
        frames = _frames(sys._current_frames().get(self._ident))
        place = where_in(frames, self.state)
        key: Seen = (False, None, None, None)
        if place is not None:
            key = (
                place.waiting,
                place.function,
                place.place,
                place.call if place.waiting else None,
            )
            if key not in self.seen and len(self.seen) >= MAX_PLACES:
                key = (key[0], key[1], None, None)
        self.looks += 1
        self.seen[key] += 1
        return frames

    def _state(self) -> str:
        if self._fd is None:
            return "?"
        try:
            return os.pread(self._fd, 1024, 0).decode().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            return "?"

    def write(self, path: str, frames: Thread) -> bool:
        lines = [f"{time.monotonic():.4f} {self.state} {self.looks} {len(frames)}"]
        lines += [f"{f.file}\t{f.line}\t{f.function}" for f in frames]
        for (waits, function, place, call), n in self.seen.items():
            lines.append(
                f"{n}\t{'w' if waits else 'b'}\t{function or ''}\t{place or ''}\t{call or ''}"
            )
        tmp = path + ".tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _frames(frame: FrameType | None) -> Thread:
    """A thread's Python frames, outermost first."""
    frames: list[Frame] = []
    while frame is not None and len(frames) < _MAX_FRAMES:
        code = frame.f_code
        frames.append(Frame(code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    del frame
    frames.reverse()
    return tuple(frames)


@dataclass(frozen=True)
class RankSample:
    """A rank's latest sample of its main thread."""

    t: float  # time.monotonic() of the look (the machine's clock: comparable across ranks)
    state: str  # the main thread's state letter (R running, S/D waiting, ...)
    frames: Thread  # outermost first
    tally: Tally  # every look since the rank started


def read_sample(run_dir: str, attempt: int, local_rank: int) -> RankSample | None:
    """The rank's latest sample, None if there is none (yet)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(_rundir.sample_path(run_dir, attempt, local_rank)) as fh:
            head, *rest = fh.read().splitlines()
        t_text, state, looks, count = head.split()
        frames = []
        for line in rest[: int(count)]:
            file, lineno, function = line.split("\t")
            frames.append(Frame(file, int(lineno) if lineno.isdigit() else 0, function))
        seen: dict[Seen, int] = {}
        for line in rest[int(count) :]:
            n, waits, function, place, call = line.split("\t")
            seen[(waits == "w", function or None, place or None, call or None)] = int(n)
        return RankSample(float(t_text), state, tuple(frames), Tally(int(looks), seen))
    return None
