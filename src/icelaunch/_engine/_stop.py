"""The one way a worker group is stopped: signal, a short grace, then SIGKILL for all it started.

torch's own stop path waits its 30 s default (``LocalElasticAgent._stop_workers``
calls ``_shutdown()`` without a timeout, and ``ProcessContext.join`` gives a
failed group 30 s of grace); :class:`icelaunch._engine._agent.Agent` sends every
stop through :func:`stop_workers` instead.

What "everything a worker started" means: every worker is the leader of a
session of its own (function workers call ``os.setsid()`` at bootstrap, torch
starts command workers with ``start_new_session=True``), so its children,
grandchildren and orphans share its process group and session even after it
died. A scan of ``/proc`` finds those, plus descendants that moved to a new
session of their own while their parent was alive, and (see :class:`JobMark`)
any process started since the launch began whose environment carries the
launch's mark. Only a process that leaves the session after its parent exited
and drops that variable from its environment escapes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from icelaunch._engine._procs import WorkerProcess
from icelaunch._rundir import MARK_ENV

logger = logging.getLogger(__name__)

GRACE_S = 3.0  # from the first signal to SIGKILL
REAP_S = 5.0  # after SIGKILL: a process in uninterruptible sleep may never go


def stop_workers(
    workers: Sequence[WorkerProcess],
    first_signal: int = signal.SIGTERM,
    grace_s: float = GRACE_S,
    mark: JobMark | None = None,
    settle_s: float = 0.0,
) -> set[int]:
    """Stop ``workers`` and every process they started; return when all are gone (bounded).

    This is the only place where a worker group is stopped (failure, restart,
    Ctrl-C, SIGTERM, a time limit, and after success for what workers left
    behind); its caller, ``Agent._shutdown``, takes the stacks of the ranks still
    running just before (icelaunch._diagnosis).

    Args:
        workers: the group's worker processes, running or not.
        first_signal: sent first to each worker's session (SIGTERM, or the signal
            the launcher received).
        grace_s: how long the processes get to exit before SIGKILL.
        mark: the launch's environment mark, to find processes that escaped.
        settle_s: how long workers may first end on their own (after a failure, a
            peer failing at the same moment finishes its report instead of being
            stopped half-way).

    Returns:
        The signals sent to running workers (empty if none was running): a worker
        whose status is another one ended on its own, not by this stop.
    """
    leaders = {w.pid for w in workers}
    if settle_s > 0:
        _wait_gone([w for w in workers if not w.dead()], (), settle_s)
    running = [w for w in workers if not w.dead()]
    targets = leaders | descendants(leaders, mark)
    if not running and len(targets) == len(leaders):
        return set()  # the common case after success: nothing left, no signal sent
    for pid in targets:
        _signal(pid, first_signal)
    _wait_gone(running, targets - leaders, grace_s)
    sent = {first_signal} if running else set()
    if any(not w.dead() for w in running):
        sent.add(signal.SIGKILL)
    for pid in leaders | descendants(leaders, mark) | targets:
        _signal(pid, signal.SIGKILL)
    _wait_gone(running, (), REAP_S)
    for w in running:
        if not w.dead():
            logger.error("worker pid %s did not end after SIGKILL (uninterruptible sleep?)", w.pid)
    return sent


def ask_to_stop(
    workers: Sequence[WorkerProcess],
    sig: int,
    asked: Iterable[int],
    grace_s: float,
    cut_short_fd: int | None = None,
) -> list[WorkerProcess]:
    """A stop someone asked for: send ``sig`` to the ``asked`` worker processes (the
    processes only, as torchrun and Kubernetes do: what a rank started is its own
    business while it saves its work), and wait until every worker has exited, up to
    ``grace_s`` or until ``cut_short_fd`` is readable (a second Ctrl-C).

    Returns the workers still running then; :func:`stop_workers` ends them and
    whatever the workers started.
    """
    chosen = set(asked)
    for w in workers:
        if w.pid in chosen and not w.dead():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(w.pid, sig)
    deadline = time.monotonic() + grace_s
    while True:
        pending = [w.pidfd for w in workers if not w.dead()]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            break
        extra = [cut_short_fd] if cut_short_fd is not None else []
        readable = select.select([*pending, *extra], [], [], left)[0]
        if cut_short_fd is not None and cut_short_fd in readable:
            break
    return [w for w in workers if not w.dead()]


def _signal(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``'s process group if it leads one (else to the process)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                return
        except ProcessLookupError:
            os.killpg(pid, sig)  # a dead, reaped leader: its orphans keep the group
            return
        os.kill(pid, sig)


def _wait_gone(workers: Sequence[WorkerProcess], others: Iterable[int], timeout: float) -> None:
    """Wait until ``workers`` and ``others`` have ended, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    fds = _pidfds(others)
    try:
        while True:
            pending = [w.pidfd for w in workers if not w.dead()]
            pending += [fd for fd in fds if not _ready(fd)]
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return
            select.select(pending, [], [], left)
    finally:
        for fd in fds:
            os.close(fd)


def _pidfds(pids: Iterable[int]) -> list[int]:
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            fds.append(os.pidfd_open(pid))
    return fds


def _ready(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@dataclass(frozen=True)
class JobMark:
    """An environment variable every process of one launch inherits, and when it began.

    Finds a descendant that left its worker's session after its parent exited, as
    long as it kept its environment.
    """

    name: str
    value: str
    since_ticks: int  # clock ticks since boot, as in /proc/<pid>/stat

    @classmethod
    def new(cls) -> JobMark:
        ticks = int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")) - 1
        return cls(MARK_ENV, uuid.uuid4().hex, ticks)

    def on(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return f"{self.name}={self.value}".encode() in fh.read().split(b"\0")
        except OSError:
            return False


def descendants(roots: set[int], mark: JobMark | None = None) -> set[int]:
    """Live processes started by ``roots``: their process groups, sessions and children,
    and (with ``mark``) any later process whose environment carries it."""
    table = _process_table(_oldest_possible(roots))
    found: set[int] = set()
    for pid, (_, pgid, sid, _) in table.items():
        if pid not in roots and (pgid in roots or sid in roots):
            found.add(pid)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = [*roots, *found]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found and child not in roots:
                found.add(child)
                stack.append(child)
    if mark is not None:
        me = os.getpid()
        for pid, (_, _, _, start) in table.items():
            known = pid in found or pid in roots or pid == me
            if not known and start >= mark.since_ticks and mark.on(pid):
                found.add(pid)
    return found


def _oldest_possible(roots: set[int]) -> int:
    """The lowest pid a process started by ``roots`` can have: pids grow until they
    wrap around (then 0: every process is looked at)."""
    low = min(roots, default=0)
    try:
        with open("/proc/sys/kernel/ns_last_pid") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        return 0
    return low if last >= low else 0


def _process_table(min_pid: int = 0) -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, pgid, sid, start time in ticks) of every live process we can see
    (from ``min_pid`` on)."""
    table: dict[int, tuple[int, int, int, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) < min_pid:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue  # a zombie holds nothing
        table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))
    return table
