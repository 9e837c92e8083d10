"""``icelaunch top [PID]``: a live view of a running launch, one row per rank.

Launches are found as ``icelaunch stacks`` finds them (their job folders).
The rows are the launcher's own samples (``<job folder>/live.json``) while
they are fresh and carry stacks: then nothing is sent to the ranks. Otherwise
this command samples the newest attempt's ranks itself, as the launcher does
(``_watching.Sampler``): ``/proc``, and one stack signal per rank per
interval, no more than ``icelaunch stacks`` run once per interval.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields, replace
from typing import Any

from icelaunch import _diagnosis, _rundir, _watching
from icelaunch.cli._stacks import launches_or_say, note_shadowed_script
from icelaunch.cli._top_view import Line, View, plain, rich_view

USAGE = "icelaunch top [PID] [--interval SECONDS] [--once]"
DESCRIPTION = """\
A live view of the workers of a running launch, refreshed every SECONDS until
the launch ends (then it exits 0, the last view left on screen). One row per
rank: its node, pid, state (starting, running, waiting = in a collective,
stopped, ended), CPU %, resident memory, GPU memory and GPU % (where it uses
CUDA), how long its Python stack has stayed the same, and where it is (its
innermost frame of user code, or the collective it waits in there). Under the
table: the launch, its attempt (restart count) and the launcher's latest
slow-rank findings. PID is the process that launched (the one running
ElasticLauncher or the icelaunch command); without it, every launch running
on this machine that you may see, one table each, until all have ended. On a
terminal the view is redrawn in place; into a pipe or a file, one plain
snapshot per refresh, a blank line after each. The ranks are not disturbed:
the launcher's own samples are shown when it takes stacks, else each rank gets
one stack signal per refresh (as from `icelaunch stacks`). Ctrl-C ends it
(status 130); no launch found: status 1. To run a script file named `top`
instead, write `icelaunch ./top`."""
#: the shortest refresh: the launcher's own sampling rate
MIN_INTERVAL_S = _watching.SAMPLE_INTERVAL_S
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as the icelaunch command reports a closed pipe
_READY = re.compile(_rundir.READY_PATTERN)

Show = Callable[[list[View]], None]


def top_command(argv: list[str]) -> int:
    """Run ``icelaunch top``; return the exit status (1: no launch found)."""
    parser = argparse.ArgumentParser(prog="icelaunch top", usage=USAGE, description=DESCRIPTION)
    parser.add_argument("pid", nargs="?", type=int, help="the launching process")
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help=f"seconds between refreshes (default 1, at least {MIN_INTERVAL_S:g})",
    )
    parser.add_argument("--once", action="store_true", help="show one view and exit")
    try:
        args = parser.parse_args(argv)
        if not args.interval >= MIN_INTERVAL_S:  # also refuses nan
            parser.error(
                f"invalid --interval {args.interval:g}: must be at least "
                f"{MIN_INTERVAL_S:g} seconds (the launcher's own rate), e.g. --interval 2"
            )
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    note_shadowed_script("top")
    launches = launches_or_say("top", args.pid)
    if not launches:
        return 1
    watchers = [Watcher(pid, job_dir) for pid, job_dir in launches]
    try:
        with _screen() as show:
            return follow(watchers, args.interval, show, once=args.once)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `icelaunch top | head`: the reader is gone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    finally:
        for watcher in watchers:
            watcher.close()


def follow(watchers: Sequence[Watcher], interval: float, show: Show, once: bool = False) -> int:
    """Show the launches every ``interval`` seconds until all have ended (or once)."""
    views = [w.view() for w in watchers]
    next_at = time.monotonic() + interval
    if once:
        if any(w.sampled_itself for w in watchers):  # CPU % and stack ages need two looks
            _wait(watchers, next_at)
            views = [w.view() for w in watchers]
        show(views)
        return 0
    while True:
        show(views)
        if all(view.ended for view in views):
            return 0
        _wait(watchers, next_at)
        next_at = max(next_at + interval, time.monotonic())
        views = [w.view() for w in watchers]


def _wait(watchers: Sequence[Watcher], until: float) -> None:
    """Until ``until`` (monotonic), or until a launcher ends."""
    fds = [fd for w in watchers if not w.ended and (fd := w.fileno()) is not None]
    timeout = max(0.0, until - time.monotonic())
    if fds:
        select.select(fds, [], [], timeout)
    else:
        time.sleep(timeout)


@contextlib.contextmanager
def _screen() -> Iterator[Show]:
    """How views are shown: redrawn in place on a terminal, else as plain snapshots."""
    if not (sys.stdout.isatty() and os.environ.get("TERM", "") not in ("dumb", "unknown")):
        yield _print_plain
        return
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        yield lambda views: live.update(rich_view(views), refresh=True)


def _print_plain(views: list[View]) -> None:
    sys.stdout.write(plain(views) + "\n\n")
    sys.stdout.flush()


def launcher_lines(doc: Mapping[str, Any]) -> list[Line]:
    """The rows of the launcher's live file (``_watching.publish``); malformed ones left out."""
    node = doc.get("node_rank")
    names = [f.name for f in fields(_watching.Row)]
    lines = []
    for entry in doc.get("ranks") or []:
        try:
            row = _watching.Row(**{name: entry[name] for name in names})
        except (KeyError, TypeError):
            continue
        lines.append(
            Line(
                row,
                node if isinstance(node, int) else None,
                entry.get("gpu_bytes"),
                entry.get("gpu_percent"),
            )
        )
    return lines


class Watcher:
    """One launch, followed: where its rows come from, and every rank seen so far."""

    def __init__(self, pid: int, job_dir: str) -> None:
        self.pid = pid
        self.job_dir = job_dir
        self.command = _diagnosis.command_line(pid)  # read now: /proc forgets it at the end
        self.ended = False
        self.sampled_itself = False  # the last view came from this command's own samples
        self._pidfd = _pidfd(pid)
        self._sampler = _watching.Sampler(owner=False)
        self._tracker = _watching.Tracker()
        self._gpu = _watching.GpuReader()
        self._run_dir = ""
        self._attempt: int | None = None
        self._node: int | None = None
        self._members: dict[int, _watching.Member] = {}  # of the attempt followed
        self._up: set[int] = set()  # ranks that run a program of their own (exec'd)
        self._stacked: set[int] = set()  # pids whose stack this command saw
        self._last_where: dict[int, str] = {}  # pid -> where it was last seen
        self._findings: tuple[str, ...] = ()  # the launcher's latest

    def fileno(self) -> int | None:
        """A descriptor that turns readable when the launcher ends (None: not to be had)."""
        return self._pidfd

    def close(self) -> None:
        """Let go of the launcher's pidfd."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def view(self) -> View:
        """The launch now: the launcher's samples if fresh, else this command's own."""
        if not self.ended and not self._running():
            self.ended = True
        doc = None if self.ended else _watching.read(self.job_dir)
        self.sampled_itself = doc is None or not doc.get("stacks")
        if doc is None:
            lines = self._sampled()
        else:
            lines = self._from_launcher(doc)
            if not doc.get("stacks"):
                lines = self._with_stacks(lines)
        if doc is not None:
            self._findings = tuple(str(f) for f in doc.get("findings") or [])
        return View(
            self.pid,
            self.command,
            self._attempt,
            tuple(self._remember(lines)),
            self._findings,  # at the end, the last ones seen
            from_launcher=doc is not None,
            ended=self.ended,
        )

    def _running(self) -> bool:
        if not os.path.isdir(self.job_dir):  # removed at the launch's end
            return False
        if self._pidfd is not None:
            return not select.select([self._pidfd], [], [], 0)[0]
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _from_launcher(self, doc: Mapping[str, Any]) -> list[Line]:
        lines = launcher_lines(doc)
        attempt = doc.get("attempt")
        folders = _rundir.run_folders(self.job_dir)
        self._follow(
            folders[0] if folders else "",
            attempt if isinstance(attempt, int) else 0,
            {ln.row.rank: _watching.Member(ln.row.local_rank, ln.row.pid) for ln in lines},
        )
        self._node = lines[0].node if lines else self._node
        shown = {ln.row.rank for ln in lines}
        gone = [  # ranks of this attempt the launcher no longer samples: they ended
            Line(_watching.Row(r, m.local_rank, m.pid, "ended", None, None, None, None), self._node)
            for r, m in self._members.items()
            if r not in shown
        ]
        return sorted(lines + gone, key=lambda ln: ln.row.rank)

    def _with_stacks(self, lines: list[Line]) -> list[Line]:
        """The launcher's rows (no stacks in them), with stacks this command takes."""
        alive = {r: m for r, m in self._members.items() if r in {ln.row.rank for ln in lines}}
        ours = {row.rank: row for row in self._own_rows(alive, stacks=True)}
        out = []
        for line in lines:
            mine = ours.get(line.row.rank)
            if mine is None or mine.where is None or line.row.state == "ended":
                out.append(line)
                continue
            row = replace(line.row, state=mine.state, where=mine.where)
            out.append(replace(line, row=replace(row, stack_age_s=mine.stack_age_s)))
        return out

    def _sampled(self) -> list[Line]:
        """This command's own look at the newest attempt's ranks."""
        if not self.ended:
            self._find_ranks()
        if not self._members:
            return []
        gpu = {} if self.ended else self._gpu.read()
        return [
            Line(
                row,
                self._node,
                gpu[row.pid].memory_bytes if row.pid in gpu else None,
                gpu[row.pid].utilisation if row.pid in gpu else None,
            )
            for row in self._own_rows(self._members, stacks=not self.ended)
        ]

    def _own_rows(
        self, members: Mapping[int, _watching.Member], stacks: bool
    ) -> list[_watching.Row]:
        source = "signal" if stacks else None  # the ranks do not sample themselves
        sample = self._sampler.sample(
            self._run_dir, self._attempt or 0, members, source, up=self._up
        )
        rows = []
        for row in self._tracker.rows(sample):
            if row.where is not None and row.pid not in self._stacked:
                self._stacked.add(row.pid)
                row = replace(row, stack_age_s=None)  # one look does not say how long
            rows.append(row)
        return rows

    def _find_ranks(self) -> None:
        """The newest attempt with a live rank, in the newest run folder that has one."""
        for run_dir in _rundir.run_folders(self.job_dir):
            for attempt in _attempts(run_dir):
                ranks = _diagnosis.known_ranks(run_dir, attempt)
                if ranks:
                    members = {r: _watching.Member(i.local_rank, i.pid) for r, i in ranks.items()}
                    self._follow(run_dir, attempt, members)
                    self._up |= {r for r, info in ranks.items() if not info.listens}
                    return

    def _follow(self, run_dir: str, attempt: int, members: dict[int, _watching.Member]) -> None:
        """Follow ``attempt``'s ranks; ranks of an older one are forgotten."""
        if (run_dir, attempt) != (self._run_dir, self._attempt):
            self._run_dir, self._attempt = run_dir, attempt
            self._members, self._up = {}, set()
        self._members.update(members)

    def _remember(self, lines: list[Line]) -> list[Line]:
        """A rank that ended keeps the place it was last seen in."""
        out = []
        for line in lines:
            row = line.row
            if row.where is not None:
                self._last_where[row.pid] = row.where
            elif row.state == "ended" and row.pid in self._last_where:
                line = replace(line, row=replace(row, where=self._last_where[row.pid]))
            out.append(line)
        return out


def _attempts(run_dir: str) -> list[int]:
    """The attempts whose ranks wrote ready files in ``run_dir``, newest first."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted({int(m[1]) for n in names if (m := _READY.match(n))}, reverse=True)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
