"""GPU memory and utilisation of the ranks' processes, from NVML (``nvidia-smi``).

``nvidia-smi`` is asked at most every :data:`MIN_INTERVAL_S` (it takes tens of
milliseconds); where it is missing or fails, nothing is reported.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

MIN_INTERVAL_S = 2.0
_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GpuUse:
    """One process's use of the GPUs: memory, and the busiest of its GPUs' utilisation."""

    memory_bytes: int
    utilisation: int | None  # percent, of the GPU(s) it uses


class GpuReader:
    """Reads the GPUs' processes, at most every :data:`MIN_INTERVAL_S`."""

    def __init__(self, command: str = "nvidia-smi") -> None:
        self._command = shutil.which(command)
        self._last = 0.0
        self._cached: dict[int, GpuUse] = {}

    @property
    def available(self) -> bool:
        """Whether there is an ``nvidia-smi`` to ask."""
        return self._command is not None

    def read(self) -> dict[int, GpuUse]:
        """GPU use by pid (processes that hold GPU memory)."""
        if self._command is None:
            return {}
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL_S:
            return self._cached
        self._last = now
        apps = self._query("--query-compute-apps=pid,gpu_uuid,used_memory")
        gpus = self._query("--query-gpu=uuid,utilization.gpu")
        if apps is None:
            self._command = None  # no driver, or no permission: do not ask again
            return {}
        busy = {row[0]: _int(row[1]) for row in gpus or [] if len(row) >= 2}
        found: dict[int, GpuUse] = {}
        for row in apps:
            if len(row) < 3 or not row[0].isdigit():
                continue
            pid, uuid, mib = int(row[0]), row[1], _int(row[2]) or 0
            before = found.get(pid)
            util = busy.get(uuid)
            if before is not None:
                util = max(u for u in (util, before.utilisation, -1) if u is not None)
                mib += before.memory_bytes >> 20
            found[pid] = GpuUse(mib << 20, util)
        self._cached = found
        return found

    def _query(self, query: str) -> list[list[str]] | None:
        assert self._command is not None
        try:
            out = subprocess.run(
                [self._command, query, "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line]


def _int(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None
