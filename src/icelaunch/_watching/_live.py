"""The launcher's latest look at its ranks, in the job folder, for ``icelaunch top``.

The launcher replaces ``<job folder>/live.json`` after every sample (atomically);
``icelaunch top`` reads it, so that looking at a job adds no signal to the ranks
when the launcher samples their stacks already. A file older than
:data:`STALE_S` is not used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from typing import Any

from icelaunch import _rundir
from icelaunch._watching._gpu import GpuUse
from icelaunch._watching._sampler import Row

VERSION = 1
STALE_S = 5.0


def publish(
    job_dir: str,
    *,
    target: str,
    attempt: int,
    node_rank: int | None,
    interval_s: float,
    stacks: bool,
    rows: list[Row],
    gpu: dict[int, GpuUse],
    findings: list[str],
) -> None:
    """Replace the job folder's live file (best effort: a full disk skips a sample)."""
    doc = {
        "version": VERSION,
        "time": time.time(),
        "launcher_pid": os.getpid(),
        "target": target,
        "attempt": attempt,
        "node_rank": node_rank,
        "interval_s": interval_s,
        "stacks": stacks,
        "ranks": [
            {
                **asdict(row),
                "gpu_bytes": gpu[row.pid].memory_bytes if row.pid in gpu else None,
                "gpu_percent": gpu[row.pid].utilisation if row.pid in gpu else None,
            }
            for row in rows
        ],
        "findings": findings,
    }
    path = _rundir.live_path(job_dir)
    tmp = f"{path}.tmp"
    with contextlib.suppress(OSError):
        with open(tmp, "w") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)


def read(job_dir: str) -> dict[str, Any] | None:
    """The launcher's latest look, if it is recent; else None."""
    try:
        with open(_rundir.live_path(job_dir)) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    if time.time() - float(doc.get("time", 0)) > STALE_S:
        return None
    return doc
