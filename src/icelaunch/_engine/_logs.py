"""Worker output for the console relay: torch's log layout, the relay writes the files.

torch is handed ``Std.NONE`` for every rank, so it opens no log files and
starts no TailLog threads (which poll every 0.1 s and join on return); it
still makes the per-attempt, per-rank folders (and their ``error.json``), in
which the relay writes ``stdout.log`` and ``stderr.log``.
"""

from __future__ import annotations

import os

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
from torch.distributed.elastic.multiprocessing.api import LogsDest

from icelaunch import _console
from icelaunch._engine._setup import std_maps
from icelaunch._rundir import attempt_of
from icelaunch._spec import LaunchSpec


class RelayedLogs(DefaultLogsSpecs):
    """torch's ``DefaultLogsSpecs`` layout with nothing redirected by torch itself."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir, redirects=Std.NONE, tee=Std.NONE)
        self._rank_dirs: dict[int, dict[int, str]] = {}

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        dest = super().reify(envs)
        attempt = attempt_of(envs[0]) if envs else 0
        self._rank_dirs[attempt] = {
            rank: os.path.dirname(path) for rank, path in dest.error_files.items()
        }
        return dest

    def rank_dir(self, attempt: int, local_rank: int) -> str | None:
        """The folder of one rank's logs in one attempt (None before it was made)."""
        return self._rank_dirs.get(attempt, {}).get(local_rank)


def routes(spec: LaunchSpec, logs: RelayedLogs) -> _console.Routes:
    """Which streams reach the console (not redirected, rank in the filter) and where
    every stream's log file goes."""
    only_file, _ = std_maps(spec)
    wanted = spec.local_ranks_filter
    bits = {"stdout": int(Std.OUT), "stderr": int(Std.ERR)}

    def shown(local_rank: int, stream: str) -> bool:
        if wanted is not None and local_rank not in wanted:
            return False
        return not int(only_file.get(local_rank, Std.NONE)) & bits[stream]

    template = spec.log_line_prefix_template
    if not spec.log_dir:  # no files to keep: the relay keeps stderr tails in memory
        return _console.Routes(template=template, shown=shown)
    return _console.Routes(template=template, shown=shown, rank_dir=logs.rank_dir)
