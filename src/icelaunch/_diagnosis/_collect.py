"""Launcher side: ask the ranks of one attempt for their stacks and read the dumps."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass

from icelaunch import _rundir
from icelaunch._rundir import STACK_SIGNAL

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
    """A rank that answers the stack signal."""

    rank: int
    local_rank: int
    pid: int
    path: str


def ready_ranks(run_dir: str, attempt: int | None = None) -> dict[int, Rank]:
    """Live ranks of ``attempt`` (the latest one if None) that answer the stack signal."""
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
    if _rundir.start_time(int(pid_text)) != start:
        return None  # exited (its pid may belong to another process by now)
    path = _rundir.stacks_path(run_dir, attempt, local_rank)
    return Rank(int(rank_text), local_rank, int(pid_text), path)


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
    if STACK_SIGNAL is None:
        return {}
    ranks = {
        r: info
        for r, info in ready_ranks(run_dir, attempt).items()
        if info.local_rank not in skip_local_ranks
    }
    offsets = {r: _offset(info.path, owner) for r, info in ranks.items()}
    for r, info in list(ranks.items()):
        try:
            os.kill(info.pid, STACK_SIGNAL)
        except OSError:
            del ranks[r]
    return _read_dumps(ranks, offsets, bound)


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
