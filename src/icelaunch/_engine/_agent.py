"""LocalElasticAgent that reacts to worker events instead of sleeping between polls."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from icelaunch._diagnosis._watch import Watch

logger = logging.getLogger(__name__)

_RESULT_SPIN_S = 0.002


class DoneListener:
    """Receives "rank returned" datagrams from workers and waits for events."""

    def __init__(self, path: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.setblocking(False)
        self.done: set[int] = set()
        self.attempt = -1

    def new_attempt(self) -> None:
        self._drain()
        self.attempt += 1
        self.done.clear()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            attempt, local_rank = (int(x) for x in data.split())
            if attempt == self.attempt:
                self.done.add(local_rank)

    def wait(self, pids: dict[int, int], timeout: float) -> None:
        """Return when a worker reports, a worker process exits, or ``timeout`` passes."""
        self._drain()
        if len(self.done) == len(pids):
            time.sleep(_RESULT_SPIN_S)  # the return value is being queued right now
            return
        with pidfds(pids.values()) as fds:
            if any(fd < 0 for fd in fds):
                return
            select.select([self._sock.fileno(), *fds], [], [], timeout)
        self._drain()

    def close(self) -> None:
        self._sock.close()


@contextlib.contextmanager
def pidfds(pids: Any) -> Iterator[list[int]]:
    fds: list[int] = []
    try:
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                fds.append(-1)
        yield fds
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def exit_status(pid: int) -> tuple[bool, int | None]:
    """(exited, status) of worker ``pid``, without reaping it.

    The status is None when unknown: for a worker forked by the fork server (not
    our child), or one torch already reaped, which it does silently only for 0.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return _has_exited(pid), None
    if info is None:
        return False, None
    return True, info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], 0)[0])
    finally:
        os.close(fd)


class Agent(LocalElasticAgent):
    """LocalElasticAgent that waits on worker events instead of fixed sleeps."""

    def __init__(
        self,
        *,
        listener: DoneListener,
        poll_interval: float,
        reports_done: bool,
        watch: Watch | None = None,
        run_dir: str = "",
        **kwargs: Any,
    ) -> None:
        """Args:
        listener: receives the workers' "returned" messages.
        poll_interval: longest wait between two looks at the workers.
        reports_done: workers announce their return (function entrypoints); a
            worker that exits without announcing has failed. Commands just exit.
        watch: time limits and stacks at every stop (icelaunch._diagnosis).
        run_dir: the launch attempt's run folder, where ranks leave their stacks.
        """
        super().__init__(**kwargs)
        self._listener = listener
        self._poll_interval = poll_interval
        self._reports_done = reports_done
        self._seen_exited: set[int] = set()
        self._watch = watch
        self._run_dir = run_dir

    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        self._listener.new_attempt()
        if self._watch is not None:
            self._watch.new_attempt()
        started: dict[int, Any] = super()._start_workers(worker_group)
        return started

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        pids = {w.local_rank: w.id for w in worker_group.workers if w.id is not None}
        bound = self._poll_interval
        if self._watch is not None:
            bound = self._watch.wait_bound(bound)
        self._listener.wait(pids, bound)
        if self._watch is not None:
            running = self._running(worker_group)
            self._watch.check(self._run_dir, self.attempt, running)
            if self._a_rank_failed(worker_group, running):
                self._take_stacks()  # torch's poll stops the other ranks at once
        # silent exits are looked for before torch's poll reaps the processes
        silent = self._silent_exits(worker_group) if self._reports_done else {}
        result: RunResult = super()._monitor_workers(worker_group)
        if not silent or result.state not in (WorkerState.HEALTHY, WorkerState.FAILED):
            return result
        silent.update(result.failures)  # torch's own record wins for a rank
        return RunResult(state=WorkerState.FAILED, failures=silent)

    def _silent_exits(self, worker_group: WorkerGroup) -> dict[int, ProcessFailure]:
        """Workers that exited without returning a result (e.g. ``os._exit(0)``).

        An exit of unknown status is counted on the second look, so that torch,
        which learns the status from the fork server, reports it first if it can.
        """
        failures: dict[int, ProcessFailure] = {}
        for w in worker_group.workers:
            if w.id is None or w.local_rank in self._listener.done:
                continue
            exited, status = exit_status(w.id)
            if not exited or (status is None and w.id not in self._seen_exited):
                if exited:
                    self._seen_exited.add(w.id)
                continue
            code = 0 if status is None else status
            failure = ProcessFailure(
                local_rank=w.local_rank, pid=w.id, exitcode=code, error_file=""
            )
            failure.message = (
                f"the worker process exited{'' if status is None else f' with status {status}'} "
                f"before its function returned (os._exit() or a crash in native code)"
            )
            failures[w.global_rank] = failure
        return failures

    def _running(self, worker_group: WorkerGroup) -> dict[int, int]:
        """Global rank -> pid of the workers that have neither returned nor exited."""
        return {
            w.global_rank: w.id
            for w in worker_group.workers
            if w.id is not None
            and w.local_rank not in self._listener.done
            and not exit_status(w.id)[0]
        }

    def _a_rank_failed(self, worker_group: WorkerGroup, running: dict[int, int]) -> bool:
        """Whether a worker ended without success (so the others are about to be stopped)."""
        for w in worker_group.workers:
            if w.id is None or w.global_rank in running or w.local_rank in self._listener.done:
                continue
            if self._reports_done or exit_status(w.id)[1] != 0:
                return True
        return False

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        self._take_stacks()
        if self._watch is not None and self._watch.dumps:
            logger.warning(
                "restarting the workers; where the running ranks were:\n%s",
                self._watch.grouped(),
            )
        super()._restart_workers(worker_group)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        """Take the stacks of the ranks still running, then stop them as torch does."""
        self._take_stacks()
        super()._shutdown(death_sig, timeout)

    def _take_stacks(self) -> None:
        group = self._worker_group
        if self._watch is None or self._pcontext is None or group.state == WorkerState.SUCCEEDED:
            return
        if self._watch.taken:
            return
        running = sorted(self._running(group))
        if not running:
            return
        self._watch.at_stop(self._run_dir, self.attempt, running, self._listener.done)

    @property
    def watch(self) -> Watch | None:
        """Time limits, memory and the stacks of the last stop."""
        return self._watch

    @property
    def attempt(self) -> int:
        """The attempt that ran last (0 for the first, 1 after one restart, ...)."""
        return self._listener.attempt
