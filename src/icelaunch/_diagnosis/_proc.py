"""What ``/proc`` tells about a rank from outside: its signal handlers, CPU time, wake-ups.

Each reader returns a neutral value (False, None, 0, empty) for a process that is
gone or unreadable: the caller decides what that means.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from dataclasses import dataclass


def status_fields(pid: int, *names: str) -> dict[str, str]:
    """The fields ``names`` of ``/proc/<pid>/status`` (those present), as text."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in names:
                found[key] = value.strip()
    return found


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` right now.

    Exact (``SigCgt`` in ``/proc/<pid>/status``): an ``exec`` resets the handlers,
    though the pid and its start time stay.
    """
    mask = status_fields(pid, "SigCgt").get("SigCgt", "")
    try:
        return bool(int(mask, 16) >> (signum - 1) & 1)
    except ValueError:
        return False


def voluntary_switches(pid: int) -> int:
    """How often the main thread of ``pid`` has gone to sleep so far (0 if unreadable)."""
    text = status_fields(pid, "voluntary_ctxt_switches").get("voluntary_ctxt_switches", "0")
    return int(text) if text.isdigit() else 0


@dataclass(frozen=True)
class Usage:
    """One look at a process: who it is, its CPU time and its main thread's wake-ups."""

    pid: int
    start: str  # with the pid, names one process for good
    cpu_ticks: int  # user + system time of all its threads, in clock ticks
    wakes: int  # voluntary context switches of its main thread


def usage(pid: int) -> Usage | None:
    """``pid``'s :class:`Usage`, None if it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None:
        return None
    # /proc/<pid>/stat sums utime (14) and stime (15) over every thread of the process
    return Usage(pid, fields[19], int(fields[11]) + int(fields[12]), voluntary_switches(pid))


@dataclass(frozen=True)
class Look:
    """One look at a process from ``/proc``, for a live view: no signal is sent."""

    pid: int
    start: str  # with the pid, names one process for good
    state: str  # its main thread's state letter: R running, S/D waiting, T stopped, ...
    cpu_ticks: int  # user + system time of all its threads, in clock ticks
    rss_bytes: int  # resident memory now


def look(pid: int) -> Look | None:
    """``pid``'s :class:`Look`, None if it is gone or a zombie."""
    fields = _stat(pid)
    if fields is None:
        return None
    rss = int(fields[21]) * _PAGE_SIZE
    return Look(pid, fields[19], fields[0], int(fields[11]) + int(fields[12]), rss)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X", "x") else fields


def descendants(roots: Collection[int]) -> dict[int, list[int]]:
    """The live descendants of each of ``roots`` (one scan of ``/proc``), by root."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None:
            parents[int(name)] = int(fields[1])
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, list[int]] = {}
    for root in roots:
        below: list[int] = []
        todo = list(children.get(root, ()))
        while todo:
            pid = todo.pop()
            below.append(pid)
            todo.extend(children.get(pid, ()))
        found[root] = below
    return found


def command_line(pid: int) -> str:
    """The command line of ``pid``, shortened, or ``?``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = fh.read().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(p.decode(errors="replace") for p in parts if p)
    return text if len(text) <= 120 else text[:117] + "..."


def clock_ticks() -> int:
    """Clock ticks per second, the unit of CPU times in ``/proc``."""
    return os.sysconf("SC_CLK_TCK")
