"""LocalElasticAgent that reacts to worker events instead of sleeping between polls."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from icelaunch import _diagnosis, _rundir, _torch_internals, _watching
from icelaunch._diagnosis import Watch
from icelaunch._engine import _forkserver, _procs, _stop
from icelaunch._engine._signals import LaunchSignals, StopOutcome, is_stop

logger = logging.getLogger(__name__)

_STATUS_WAIT_S = 5.0  # the fork server reaps a worker, then sends its status
_SETTLE_S = 0.5  # after a failure, before the others are stopped
_USUAL_STOP_SIGNALS = _rundir.stop_signals()


class DoneListener:
    """Receives "rank returned" datagrams from workers and waits for events.

    ``address`` is a Linux abstract socket name (starting with NUL), so its length
    does not depend on TMPDIR.
    """

    def __init__(self, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(address)
        self._sock.setblocking(False)
        self.done: set[int] = set()
        self.up: set[int] = set()  # local ranks whose code runs (they opened their queues)
        self.attempt = -1

    def new_attempt(self, restart_count: int) -> None:
        """Workers start again; they report with torch's ``restart_count``, which a
        restart for a membership change (a node joined) leaves as it was."""
        self._drain()
        self.attempt = restart_count
        self.done.clear()
        self.up.clear()

    def receive(self) -> None:
        """Take in the reports that arrived (never blocks)."""
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            attempt, local_rank, what = _rundir.read_notice(data)
            if attempt == self.attempt:
                (self.up if what == "up" else self.done).add(local_rank)

    def wait(self, fds: list[int], timeout: float) -> None:
        """Return when a worker reports, one of ``fds`` is readable, or ``timeout`` passes."""
        self._drain()
        select.select([self._sock.fileno(), *fds], [], [], timeout)
        self._drain()

    def close(self) -> None:
        self._sock.close()


#: (attempt, global rank, failure) -> one log line; the engine's, which reads reports
Describe = Callable[[int, int, ProcessFailure], str]


class Agent(LocalElasticAgent):
    """LocalElasticAgent that waits on worker events and stops workers our way.

    A worker's exit is seen as soon as its status is known, with the true status
    and the time it was seen; any failure ends the group at once through
    :func:`icelaunch._engine._stop.stop_workers` (3 s to SIGKILL, everything the
    workers started included), never through torch's 30 s paths.
    """

    def __init__(
        self,
        *,
        listener: DoneListener,
        poll_interval: float,
        reports_done: bool,
        describe: Describe | None = None,
        mark: _stop.JobMark | None = None,
        watch: Watch | None = None,
        run_dir: str = "",
        signals: LaunchSignals | None = None,
        shutdown_timeout: float = 30.0,
        monitor: _watching.Monitor | None = None,
        **kwargs: Any,
    ) -> None:
        """Args:
        listener: receives the workers' "returned" messages.
        poll_interval: longest wait between two looks at the workers.
        reports_done: workers announce their return (function entrypoints); a
            worker that exits without announcing has failed. Commands just exit.
        describe: how a failed rank is told in the restart warning.
        mark: the environment mark of the launch's processes, for the stop path.
        watch: time limits and stacks at every stop (icelaunch._diagnosis).
        run_dir: the launch attempt's run folder, where ranks leave their stacks.
        signals: the launch's signal handling (stops asked for, forwards).
        shutdown_timeout: seconds the ranks get to exit on their own after a stop
            someone asked for (a signal), before SIGKILL.
        monitor: samples the ranks (slow rank, ``icelaunch top``) and records the run
            report (icelaunch._watching).
        """
        super().__init__(**kwargs)
        self._listener = listener
        self._poll_interval = poll_interval
        self._reports_done = reports_done
        self._describe = describe
        self._mark = mark
        self._workers: list[_procs.WorkerProcess] = []
        self._died: dict[int, float] = {}  # local rank -> time.time() its death was seen
        #: local rank -> (true exit status, time.time() of death), this attempt
        self.exits: dict[int, tuple[int, float]] = {}
        #: global rank -> failure, for workers that failed on their own before the last stop
        self.own_failures: dict[int, ProcessFailure] = {}
        self._last_failures: dict[int, ProcessFailure] = {}
        self._watch = watch
        self._run_dir = run_dir
        self._restarting = False
        self._values: dict[int, Any] = {}  # local rank -> return value, this attempt
        self._unlinked = False  # the names of this attempt's semaphores are removed
        #: every value is taken; the workers end on their own until :meth:`finish`
        self.finishing = False
        self._signals = signals
        self._grace_s = shutdown_timeout
        #: after a stop asked for by a signal: how the ranks ended
        self.stop_outcome: StopOutcome | None = None
        self._monitor = monitor
        self._stopping_ranks = False  # ranks that end now were ended by our stop
        #: the signals our stop sent, once known (see :func:`_end_in_stop`)
        self._stop_sent: set[int] | None = None
        self._told_up: set[int] = set()  # local ranks the monitor knows are up

    def _rendezvous(self, worker_group: WorkerGroup) -> None:
        """torch's rendezvous; a stop noted while the launch started is raised first,
        and one that comes while this node waits for the others is answered at once."""
        if self._signals is None:
            super()._rendezvous(worker_group)
            return
        with self._signals.answering():
            super()._rendezvous(worker_group)

    def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
        self._listener.new_attempt(self.restarts_used_of(worker_group))
        self._died, self.exits, self.own_failures, self._values = {}, {}, {}, {}
        self._unlinked = False
        if self._watch is not None:
            self._watch.new_attempt()
        check = None
        if self._signals is not None:
            self._signals.stopping = False  # a stop asked for while the last ones stopped
            self._signals.raise_requested()  # (a restart), or while the launch started,
            check = self._signals.raise_requested  # ends the launch: none is started
        if _torch_internals.start_method(self) == "forkserver":
            _forkserver.wait_ready(check=check)  # the start below holds a stop back
        with (
            _torch_internals.terminate_handler_deferred() as noted,  # none started unknown
            _procs.semaphores_named_for_sweep(),
        ):
            started: dict[int, Any] = super()._start_workers(worker_group)
            self._workers = _procs.workers_of(_torch_internals.process_context(self))
            if self._signals is not None:
                self._signals.install(self._forward)  # ours instead of torch's
        self._stopping_ranks, self._stop_sent, self._told_up = False, None, set()
        if self._monitor is not None:
            self._monitor.event(  # the monitor's attempt is still the last one's here
                "rendezvous_done", "rendezvous done; workers starting", attempt=self.attempt
            )
            self._monitor.workers_started(
                self._run_dir,
                self.attempt,
                {
                    worker_group.workers[w.local_rank].global_rank: _watching.Member(
                        w.local_rank, w.pid
                    )
                    for w in self._workers
                },
            )
        if self._signals is not None:
            for sig in noted:
                self._signals.deliver(sig)  # a stop raises SignalException here
            self._signals.raise_requested()  # or one noted while the workers started
        return started

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        live = [w.pidfd for w in self._workers if w.local_rank not in self._died]
        queues = _procs.return_queues(_torch_internals.process_context(self))
        values = [_procs.queue_fd(q) for r, q in queues.items() if r not in self._values]
        bound = self._poll_interval
        if self._watch is not None:
            bound = self._watch.wait_bound(bound)
        if self._monitor is not None:
            bound = self._monitor.wait_bound(bound)
        wake = [self._signals.fileno()] if self._signals is not None else []
        self._listener.wait(live + values + wake, bound)
        if self._signals is not None:
            self._signals.raise_requested()  # a stop asked for from a thread
        self._note_exits()
        if self._watch is not None:
            self._check_limits(worker_group)
        self._listener.receive()  # a rank that returned, then exited, has reported by now
        if self._monitor is not None:
            self._watch_ranks(worker_group)
        if not self._unlinked and len(self._listener.up) == len(self._workers):
            _procs.unlink_semaphores(_torch_internals.process_context(self))
            self._unlinked = True
        failures = self._failures(worker_group, set(self.exits))
        if failures:
            self._last_failures = failures
            if self._monitor is not None:
                first = min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
                self._monitor.event(
                    "failure",
                    f"rank {first[0]} failed (exit status {first[1].exitcode})",
                    rank=first[0],
                )
            return RunResult(state=WorkerState.FAILED, failures=failures)
        if self._reports_done:
            return self._take_values(worker_group, queues)
        if len(self.exits) < len(self._workers):
            return RunResult(state=WorkerState.HEALTHY)
        result: RunResult = super()._monitor_workers(worker_group)  # a command's end
        return result

    def _take_values(self, worker_group: WorkerGroup, queues: dict[int, Any]) -> RunResult:
        """Take the values queued so far; once every rank's is in, succeed at once.

        The workers are then released and end on their own (destroying their
        process groups) while the launch returns: :meth:`finish` waits for them.
        torch's ``_poll`` would wait for every process to exit first. A stop signal
        meanwhile is raised after it: raised inside a queue's read or the release (a
        multiprocessing Event), it would leave them half done.
        """
        held: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if self._signals is not None:
            held = self._signals.deferred()
        with held:
            for local_rank, queue in queues.items():
                if local_rank not in self._values and not queue.empty():
                    self._values[local_rank] = queue.get()
                    if self._monitor is not None:
                        self._monitor.rank_returned(worker_group.workers[local_rank].global_rank)
            every = len(self._values) == len(self._workers)
            if every:
                _procs.release_workers(_torch_internals.process_context(self))
        if not every:
            return RunResult(state=WorkerState.HEALTHY)
        self.finishing = True
        by_rank = {worker_group.workers[r].global_rank: v for r, v in self._values.items()}
        return RunResult(state=WorkerState.SUCCEEDED, return_values=by_rank)

    def finish(self, exit_wait_s: float) -> None:
        """After a success: let the released workers end on their own (at most
        ``exit_wait_s``), stop what they left running, let torch close its context.

        A rank that returned its value but then exited with another status than 0
        is logged.
        """
        if not self.finishing:
            return
        self.finishing = False
        self._stop(signal.SIGTERM, exit_wait_s)
        for rank, failure in sorted(self.own_failures.items()):
            logger.warning(
                "rank %s returned its value, then its process ended with status %s",
                rank,
                failure.exitcode,
            )

    def _note_exits(self) -> None:
        """Note when workers died (now, at the latest) and then their true statuses."""
        now = time.time()
        for w in self._workers:
            if w.local_rank not in self._died and w.dead():
                self._died[w.local_rank] = now
        for w in self._workers:
            if w.local_rank in self._died and w.local_rank not in self.exits:
                code = w.wait_status(_STATUS_WAIT_S)
                if code is not None:
                    self.exits[w.local_rank] = (code, self._died[w.local_rank])
                    self._tell_end(w.local_rank, code, self._died[w.local_rank])

    def _check_limits(self, worker_group: WorkerGroup) -> None:
        """The launch's time limits (``timeout``, ``hang_timeout``); a stop for one is an
        event of the report."""
        assert self._watch is not None
        try:
            self._watch.check(self._run_dir, self.attempt, self._running(worker_group))
        except _diagnosis.Stopped as stop:
            if self._monitor is not None:
                self._monitor.event("stop", stop.message, reason=stop.reason)
            raise

    def _tell_end(self, local_rank: int, code: int, died: float) -> None:
        """The monitor learns how a rank ended: returned, stopped by us, or on its own."""
        if self._monitor is None:
            return
        group = _torch_internals.worker_group(self)
        rank = group.workers[local_rank].global_rank
        end = None
        if code == 0 and local_rank in self._listener.done:
            end = "returned"
        elif self._stopping_ranks:
            end = _end_in_stop(code, self._stop_sent)
        self._monitor.rank_ended(rank, code, died, end)

    def _watch_ranks(self, worker_group: WorkerGroup) -> None:
        """Tell the monitor which ranks reported in; let it sample if one is due."""
        assert self._monitor is not None
        up = {worker_group.workers[r].global_rank for r in self._listener.up}
        for local_rank in sorted(self._listener.up - self._told_up):
            self._monitor.rank_up(worker_group.workers[local_rank].global_rank)
        self._told_up |= self._listener.up
        self._monitor.check(self._running(worker_group), up)

    def _failures(self, worker_group: WorkerGroup, ranks: set[int]) -> dict[int, ProcessFailure]:
        """Which of local ``ranks`` ended badly: a non-zero status, or a function that
        never returned."""
        failures: dict[int, ProcessFailure] = {}
        for w in self._workers:
            if w.local_rank not in ranks or w.local_rank not in self.exits:
                continue
            code, died = self.exits[w.local_rank]
            returned = w.local_rank in self._listener.done or not self._reports_done
            if code == 0 and returned:
                continue
            failure = ProcessFailure(
                local_rank=w.local_rank,
                pid=w.pid,
                exitcode=code,
                error_file=_procs.error_file(_torch_internals.process_context(self), w.local_rank),
            )
            failure.timestamp = died  # type: ignore[assignment]  # a float: finer order
            if self._reports_done and not returned and not isinstance(failure.message, dict):
                failure.message = (  # torch's error file (a dict) or our report says more
                    f"the worker process exited with status {code} before its function "
                    f"returned (os._exit(), a signal, or a crash in native code)"
                )
            failures[worker_group.workers[w.local_rank].global_rank] = failure
        return failures

    def _stop_workers(self, worker_group: WorkerGroup) -> None:
        """After a failure (also before its restart) the others may first settle briefly."""
        failed = worker_group.state in (WorkerState.FAILED, WorkerState.UNHEALTHY)
        self._stop(signal.SIGTERM, _SETTLE_S if failed else 0.0)

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        """The end of a run, or a signal to the launcher: a stop someone asked for gets
        ``shutdown_timeout`` of grace, anything else stops at once; after a success
        the engine calls :meth:`finish` instead, later."""
        if self.finishing:
            return
        if self._signals is not None and self._signals.requested is not None:
            self._stop_asked(self._signals.requested)
        else:
            self._stop(death_sig, 0.0)

    @staticmethod
    def _first_signal(death_sig: signal.Signals) -> int:
        """What workers get first: SIGTERM for the launcher's stop signals (they
        lead sessions of their own: a Ctrl-C at the terminal reaches the launcher
        only); another signal (e.g. SIGUSR1 from ``--signals-to-handle``) as it is."""
        return signal.SIGTERM if is_stop(death_sig) else death_sig

    def _stop(self, death_sig: signal.Signals, settle_s: float, stacks: bool = True) -> None:
        """Stop the workers our way, then let torch close its process context.

        Workers get :meth:`_first_signal` of what the launcher received, then SIGKILL.

        Workers that failed on their own (before the stop, or during it of something
        else than the stop's signals) are kept in :attr:`own_failures`.
        """
        if self._signals is not None:
            self._signals.stopping = True  # a stop signal now only notes itself
        if self._workers:
            self._note_exits()
            if stacks:  # of the ranks about to be stopped
                self._take_stacks(_torch_internals.worker_group(self))
            died_before = set(self._died)
            self._stopping_ranks = True
            sent = _stop.stop_workers(
                self._workers, self._first_signal(death_sig), mark=self._mark, settle_s=settle_s
            )
            self._stop_sent = sent
            self._note_exits()
            on_own = {r for r, (code, _) in self.exits.items() if -code not in sent}
            self.own_failures = self._failures(
                _torch_internals.worker_group(self), died_before | on_own
            )
            for w in self._workers:
                w.close()
            self._workers = []
        # workers are gone: torch only closes its process context
        _torch_internals.close_process_context(super()._shutdown, death_sig)

    def _stop_asked(self, sig: signal.Signals) -> None:
        """A stop someone asked for: the ranks get ``sig`` (or, where they call
        ``stop_requested()``, the request) and ``shutdown_timeout`` to exit on their
        own; those still running then are killed, with everything the workers started.
        """
        signals = self._signals
        assert signals is not None
        signals.stopping = True
        signals.drain()  # from now on, a new stop signal cuts the grace short
        group = _torch_internals.worker_group(self)
        outcome = StopOutcome(sig, self._grace_s)
        self.stop_outcome = outcome
        if self._workers:
            began = time.monotonic()
            if self._monitor is not None:
                self._monitor.event(
                    "stop", f"{sig.name}: the ranks were asked to stop", reason=sig.name
                )
            self._write_stop_file(sig)  # ranks that poll stop_requested() start saving now
            if self._reports_done:
                _procs.release_workers(_torch_internals.process_context(self))
            self._note_exits()
            self._take_stacks(group)  # where the ranks were when the stop came (shown)
            asked = self._to_signal()
            self._stopping_ranks, self._stop_sent = True, None  # every end is the stop's now
            logger.warning(
                "%s: stopping; the ranks have up to %s s to exit on their own "
                "(shutdown_timeout; another stop signal, e.g. Ctrl-C, stops them now)",
                sig.name,
                f"{self._grace_s:g}",
            )
            first = self._first_signal(sig)
            grace = max(0.0, self._grace_s - (time.monotonic() - began))  # from the signal
            left = _stop.ask_to_stop(self._workers, first, asked, grace, signals.fileno())
            if left and _readable(signals.fileno()):
                outcome.cut_short = signals.last
            outcome.values = self._returned_values(group)
            outcome.killed = {group.workers[w.local_rank].global_rank for w in left}
            self._stop(signal.SIGKILL if left else sig, 0.0, stacks=False)
            if self._monitor is not None:
                for rank in outcome.killed:
                    self._monitor.mark_end(rank, "killed")
            outcome.exits = {
                group.workers[r].global_rank: code for r, (code, _) in sorted(self.exits.items())
            }
        else:
            _torch_internals.close_process_context(super()._shutdown, sig)

    def _returned_values(self, worker_group: WorkerGroup) -> dict[int, Any]:
        """The values of the ranks that returned during a stop, by global rank (best effort:
        the stop goes on whatever a queue does)."""
        values = dict(self._values)
        try:
            for local_rank, queue in _procs.return_queues(
                _torch_internals.process_context(self)
            ).items():
                if local_rank not in values and not queue.empty():
                    values[local_rank] = queue.get(timeout=1)
        except Exception:
            logger.debug("the values of a stopped launch could not all be read", exc_info=True)
        return {worker_group.workers[r].global_rank: v for r, v in sorted(values.items())}

    def _write_stop_file(self, sig: signal.Signals) -> None:
        """Tell the ranks' ``stop_requested()`` (they look for this file)."""
        path = _rundir.stop_path(self._run_dir)
        try:
            with open(path + ".tmp", "w") as fh:
                fh.write(sig.name)
            os.replace(path + ".tmp", path)
        except OSError:
            logger.debug("could not write %s", path, exc_info=True)

    def _polling(self) -> set[int]:
        """The pids of the workers that call ``stop_requested()`` (their signals are noted)."""
        return {
            w.pid
            for w in self._workers
            if os.path.exists(_rundir.polling_path(self._run_dir, self.attempt, w.local_rank))
        }

    def _to_signal(self) -> set[int]:
        """Which workers get the signal: those that call ``stop_requested()``, or every one
        if none does (as torchrun). A worker that does not call it yet while others do is
        left alone: it sees the request at its first call."""
        polling = self._polling()
        return polling if polling else {w.pid for w in self._workers}

    def _forward(self, sig: signal.Signals) -> None:
        """A forwarded signal (SIGUSR1, ...): to every rank that handles it (every rank
        notes SIGUSR1 and SIGUSR2 from its bootstrap on, unless it chose otherwise: a
        rank is never ended by a notice), and ``stop_requested()`` turns True; the
        launch goes on."""
        self._write_stop_file(sig)  # also for workers that start later (a restart)
        if not self._workers:
            return
        group = _torch_internals.worker_group(self)
        sent = []
        for w in self._workers:
            if not w.dead() and _rundir.catches_signal(w.pid, sig):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(w.pid, sig)
                    sent.append(group.workers[w.local_rank].global_rank)
        logger.warning(
            "%s passed on to %s; the launch goes on (stop_requested() is now True)",
            sig.name,
            f"ranks {', '.join(map(str, sent))}" if sent else "no rank (none handles it)",
        )

    def _running(self, worker_group: WorkerGroup) -> dict[int, int]:
        """Global rank -> pid of the workers that have neither returned nor died."""
        return {
            worker_group.workers[w.local_rank].global_rank: w.pid
            for w in self._workers
            if w.local_rank not in self._died and w.local_rank not in self._listener.done
        }

    def _take_stacks(self, worker_group: WorkerGroup) -> None:
        """Diagnosis: the stacks of the ranks still running, before they are stopped."""
        if self._watch is None or worker_group.state == WorkerState.SUCCEEDED:
            return
        self._listener.receive()
        running = sorted(self._running(worker_group))
        if not running:
            return
        self._watch.at_stop(self._run_dir, self.attempt, running, self._listener.done)
        if self._monitor is not None:
            self._monitor.stacks_taken(self._watch.stacks, self._watch.grouped())
        if self._restarting and self._watch.dumps:
            logger.warning("where the running ranks were:\n%s", self._watch.grouped())

    def _restart_workers(self, worker_group: WorkerGroup) -> None:
        if worker_group.state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
            self._announce_restart(worker_group)
        if self._monitor is not None:
            k = self.restarts_used_of(worker_group)
            self._monitor.event("restart", f"restarting the workers (restart {k})")
        self._restarting = True
        try:
            super()._restart_workers(worker_group)
        finally:
            self._restarting = False

    def _announce_restart(self, worker_group: WorkerGroup) -> None:
        spec = worker_group.spec
        k = self.restarts_used_of(worker_group)
        for rank, failure in sorted(self._last_failures.items()):
            text = f"rank {rank} failed"
            if self._describe is not None:
                text = self._describe(self.attempt, rank, failure)
            logger.warning("%s; restarting the workers (restart %s/%s)", text, k, spec.max_restarts)

    @property
    def restarts_used(self) -> int:
        """Restarts spent on failed attempts so far."""
        return self.restarts_used_of(_torch_internals.worker_group(self))

    def restarts_used_of(self, worker_group: WorkerGroup) -> int:
        """Restarts spent so far, out of ``worker_group``'s ``max_restarts``."""
        return int(worker_group.spec.max_restarts - _torch_internals.remaining_restarts(self))

    @property
    def watch(self) -> Watch | None:
        """Time limits, memory and the stacks of the last stop."""
        return self._watch

    @property
    def attempt(self) -> int:
        """The attempt that ran last (0 for the first, 1 after one restart, ...)."""
        return self._listener.attempt

    def _record_worker_events(self, result: RunResult) -> None:
        # torch builds one event per worker, each with a DNS look-up of this host
        # (tens of ms on return), for the default handler, which drops them
        if _torch_internals.worker_group(self).spec.event_log_handler != "null":
            super()._record_worker_events(result)


def _end_in_stop(code: int, sent: set[int] | None) -> str | None:
    """How a rank that ended while its workers were stopped ended, for the report.

    ``sent``: the signals the stop sent (None in a stop asked for by a signal,
    where every end is the stop's). ``stopped`` by the stop's signal, ``killed``
    once its grace ran out; None (its own end, e.g. a peer that failed of a
    failure while the others settled) for a status none of them gives.
    """
    if sent is None:
        return "stopped"
    if -code not in sent:
        return None
    return "killed" if -code == signal.SIGKILL else "stopped"


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
