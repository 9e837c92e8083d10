"""Launcher side: ask the ranks of one attempt for their stacks and read the dumps.

A rank is signalled only while its handler is in place: its ready file names
it (pid and start time) and ``/proc`` shows a handler for the stack signal
(an ``exec`` keeps the pid and start time but drops the handler).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from icelaunch import _rundir
from icelaunch._diagnosis import _proc
from icelaunch._rundir import STACK_SIGNAL, STACK_SIGNAL_NAME

TOTAL_BOUND_S = 1.0  # for all ranks together
_SETTLED_S = 0.03  # a dump that ends at a process's outermost frame is complete after this
_SETTLED_LONG_S = 0.25  # any other dump that did not grow for this long is taken as complete
# faulthandler lists the oldest (main) thread last, its outermost frame last of all
_OUTERMOST = re.compile(r'File ".*", line \d+ in (<module>|_run_module_as_main)\n$')
_POLL_S = 0.01
_MAX_FILE_BYTES = 1 << 20  # the launcher empties a rank's dump file past this size
_READY = re.compile(_rundir.READY_PATTERN)


@dataclass(frozen=True)
class Rank:
    """A live rank that wrote its ready file (its stack handler was set up)."""

    rank: int
    local_rank: int
    pid: int
    start: str  # its start time: with the pid, this process for good
    path: str
    listens: bool  # its handler for the stack signal is still in place (no exec since)


def ready_ranks(run_dir: str, attempt: int | None = None) -> dict[int, Rank]:
    """Live ranks of ``attempt`` (the latest one if None) that answer the stack signal."""
    return {r: info for r, info in known_ranks(run_dir, attempt).items() if info.listens}


def known_ranks(run_dir: str, attempt: int | None = None) -> dict[int, Rank]:
    """Live ranks of ``attempt`` (the latest one if None) with a ready file, listening or not."""
    found: dict[int, dict[int, Rank]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(run_dir):
            match = _READY.match(name)
            if match is None:
                continue
            rank = _read_ready(run_dir, int(match[1]), int(match[2]))
            if rank is not None:
                found.setdefault(int(match[1]), {})[rank.rank] = rank
    if not found:
        return {}
    return found.get(max(found) if attempt is None else attempt, {})


def _read_ready(run_dir: str, attempt: int, local_rank: int) -> Rank | None:
    try:
        with open(_rundir.ready_path(run_dir, attempt, local_rank)) as fh:
            pid_text, start, rank_text = fh.read().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    if _rundir.start_time(pid) != start:
        return None  # exited (its pid may belong to another process by now)
    path = _rundir.stacks_path(run_dir, attempt, local_rank)
    listens = STACK_SIGNAL is not None and _proc.catches(pid, STACK_SIGNAL)
    return Rank(int(rank_text), local_rank, pid, start, path, listens)


def take(
    run_dir: str,
    attempt: int | None = None,
    skip_local_ranks: Collection[int] = (),
    bound: float = TOTAL_BOUND_S,
    owner: bool = True,
) -> dict[int, str]:
    """Raw faulthandler dumps by global rank, from every live rank of ``attempt``.

    Args:
        run_dir: the attempt's run folder.
        attempt: restart count; None for the latest.
        skip_local_ranks: ranks not to ask (e.g. those that already returned).
        bound: seconds to wait for all dumps together.
        owner: the launcher itself (it may empty grown dump files); False for onlookers.
    """
    ranks = {
        r: info
        for r, info in ready_ranks(run_dir, attempt).items()
        if info.local_rank not in skip_local_ranks
    }
    return ask(ranks, bound, owner)


def ask(
    ranks: Mapping[int, Rank], bound: float = TOTAL_BOUND_S, owner: bool = True
) -> dict[int, str]:
    """Raw dumps by global rank from those of ``ranks`` whose handler is in place now."""
    if STACK_SIGNAL is None:
        return {}
    asked = dict(ranks)
    offsets = {r: _offset(info.path, owner) for r, info in asked.items()}
    for r, info in list(asked.items()):
        try:
            # checked right before the signal: a rank that exec'd has no handler any more
            if not listens(info):
                raise ProcessLookupError
            os.kill(info.pid, STACK_SIGNAL)
        except OSError:
            del asked[r]
    return _read_dumps(asked, offsets, bound)


def listens(rank: Rank) -> bool:
    """Whether ``rank``'s process still runs and has a handler for the stack signal."""
    return (
        STACK_SIGNAL is not None
        and _rundir.start_time(rank.pid) == rank.start
        and _proc.catches(rank.pid, STACK_SIGNAL)
    )


def why_silent(ranks: Mapping[int, Rank], answered: Collection[int]) -> dict[int, str]:
    """A one-line note for each of ``ranks`` that gave no stack, by global rank."""
    notes: dict[int, str] = {}
    for r, info in ranks.items():
        if r in answered:
            continue
        if not info.listens:
            notes[r] = (
                f"(no Python stack: it runs `{_proc.command_line(info.pid)}` without icelaunch's "
                f"stack handler, a program other than Python or one started by exec)"
            )
        else:
            notes[r] = (
                f"(no stack: it did not answer the stack signal ({STACK_SIGNAL_NAME}) within "
                f"{TOTAL_BOUND_S:g} s; does its program handle {STACK_SIGNAL_NAME} itself?)"
            )
    return notes


def _offset(path: str, owner: bool) -> int:
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0
    if owner and size > _MAX_FILE_BYTES:
        with open(path, "r+") as fh:  # the worker appends (O_APPEND): it starts over at 0
            fh.truncate(0)
        return 0
    return size


def _read_dumps(ranks: dict[int, Rank], offsets: dict[int, int], bound: float) -> dict[int, str]:
    """Each rank's new text, once it stopped growing (faulthandler writes no end mark)."""
    deadline = time.monotonic() + bound
    texts: dict[int, str] = {}
    changed: dict[int, float] = {}
    pending = set(ranks)
    while pending and time.monotonic() < deadline:
        time.sleep(_POLL_S)  # no event says "dump complete": a short, bounded poll
        now = time.monotonic()
        for r in list(pending):
            text = _read_from(ranks[r].path, offsets[r])
            if text != texts.get(r):
                texts[r], changed[r] = text, now
            elif text.endswith("\n") and now - changed[r] >= _settle_time(text):
                pending.discard(r)
    return {r: text for r, text in sorted(texts.items()) if text}


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _settle_time(text: str) -> float:
    """How long a dump must stay unchanged to be taken as complete."""
    return _SETTLED_S if _OUTERMOST.search(text[-400:]) else _SETTLED_LONG_S
