"""What one look tells about a rank: where its main thread is, and whether it waits for peers.

A rank **waits in a collective** when its main thread is not running (``/proc``
state other than ``R``) and, inside its innermost user frame, it is in torch's
code that waits for the other ranks: ``torch.distributed`` (``all_reduce``,
``barrier``, ...), autograd's backward (where DDP waits for its gradient
all-reduce), DDP's forward (buffer broadcasts) or a CUDA synchronisation.
A rank that runs, or sleeps in its own code or another library (reading
data), is **busy** there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from icelaunch._diagnosis._format import Frame, Thread, is_library, user_frames, user_threads

_SEP = os.sep
#: torch's modules in which a rank that does not run waits for its peers
_PEER_WAITS = tuple(
    _SEP + _SEP.join(parts)
    for parts in (
        ("torch", "distributed", ""),
        ("torch", "autograd", ""),
        ("torch", "nn", "parallel", ""),
        ("torch", "cuda", ""),
        ("torch", "_tensor.py"),
    )
)
#: decorators' frames, skipped when naming the call a rank waits in
_WRAPPERS = frozenset({"wrapper", "inner", "_fn", "decorate_context", "wrapped", "__call__"})


@dataclass(frozen=True)
class Where:
    """Where a rank's main thread is, seen in one stack sample."""

    waiting: bool  # waits for its peers in a collective
    function: str | None  # its innermost user frame's function, e.g. ``load_batch``
    place: str | None  # that frame's ``file.py:line``
    call: str | None  # the library call it is in from there, e.g. ``all_reduce``
    key: tuple[Frame, ...]  # the main thread's user frames: a changed key is progress

    @property
    def label(self) -> str:
        """``all_reduce (train.py:18)`` while waiting, else ``load_batch (data.py:40)``."""
        name = self.call if self.waiting and self.call else self.function
        return f"{name or '?'} ({self.place or '?'})"


def where(dump: str, proc_state: str) -> Where | None:
    """Classify the main thread of one faulthandler dump; None if it has no user frame."""
    threads = user_threads(dump)
    if not threads:
        return None
    return where_in(threads[0], proc_state)  # faulthandler lists the main thread last


def where_in(frames: Thread, proc_state: str) -> Where | None:
    """Classify a main thread's frames (outermost first); None if it has no user frame."""
    main = user_frames(frames)
    focus = _innermost_user(main)
    if focus is None:
        return None
    frame = main[focus]
    inside = main[focus + 1 :]
    call = next((f.function for f in inside if f.function not in _WRAPPERS), None)
    waits = proc_state != "R" and any(_waits_for_peers(f) for f in inside)
    place = f"{os.path.basename(frame.file)}:{frame.line}"
    return Where(waits, frame.function, place, call, main)


def _innermost_user(thread: Thread) -> int | None:
    for index in range(len(thread) - 1, -1, -1):
        if not is_library(thread[index]):
            return index
    return None


def _waits_for_peers(frame: Frame) -> bool:
    return any(part in frame.file for part in _PEER_WAITS)
