"""Out-of-memory kills: the kernel's oom_kill counters, and each rank's peak memory."""

from __future__ import annotations

import contextlib
import os

_VMSTAT = "/proc/vmstat"


def _mount_points() -> tuple[str | None, str | None]:
    """Mount points of cgroup v2 and of cgroup v1's memory controller."""
    v2 = v1 = None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _, options = [*right.split(), "", "", ""][:3]
            mount = left.split()[4]
            if fstype == "cgroup2" and v2 is None:
                v2 = mount
            if fstype == "cgroup" and "memory" in options.split(","):
                v1 = mount
    return v2, v1


def oom_counters(pid: int | None = None) -> dict[str, int]:
    """oom_kill counters that cover process ``pid`` (this one by default), by source file.

    cgroup v2 ``memory.events``, cgroup v1 ``memory.oom_control`` (both count kills
    in the cgroup and below it) and, where neither is readable, the machine's
    ``/proc/vmstat``.
    """
    v2, v1 = _mount_points()
    files: list[str] = []
    with contextlib.suppress(OSError), open(f"/proc/{pid or 'self'}/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "" and v2:
                files.append(os.path.join(v2 + path, "memory.events"))
            elif "memory" in controllers.split(",") and v1:
                files.append(os.path.join(v1 + path, "memory.oom_control"))
    counters = {f: n for f in files if (n := _read_counter(f)) is not None}
    if not counters:
        counters = {f: n for f in (_VMSTAT,) if (n := _read_counter(f)) is not None}
    return counters


def _read_counter(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError), open(path) as fh:
        for line in fh:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return None


def peak_bytes(pid: int) -> int | None:
    """The peak resident memory of ``pid`` so far (``VmHWM``), None if unreadable."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def mib(n: int) -> str:
    """``n`` bytes in MiB, e.g. ``'512 MiB'``."""
    return f"{n / (1 << 20):.0f} MiB"


class MemoryWatch:
    """Peaks of the ranks' memory, sampled by the launcher, and the oom_kill counters."""

    def __init__(self) -> None:
        self._before = oom_counters()
        self.peaks: dict[int, int] = {}

    def sample(self, pids: dict[int, int]) -> None:
        """Read the peak memory of each rank (global rank -> pid)."""
        for rank, pid in pids.items():
            peak = peak_bytes(pid)
            if peak is not None and peak > self.peaks.get(rank, 0):
                self.peaks[rank] = peak

    def oom_kills(self) -> list[str]:
        """The counters that rose since the launch began, e.g. ``memory.events: 0 -> 1``."""
        now = oom_counters()
        return [
            f"{path} oom_kill {before} -> {now[path]}"
            for path, before in self._before.items()
            if now.get(path, before) > before
        ]

    def explain_kill(self, rank: int) -> str | None:
        """Why a rank died of SIGKILL, if the out-of-memory killer did it."""
        rises = self.oom_kills()
        if not rises:
            return None
        peak = self.peaks.get(rank)
        seen = f"; its peak memory as sampled by the launcher: {mib(peak)}" if peak else ""
        return (
            f"killed by the kernel's out-of-memory killer ({'; '.join(rises)}){seen}. "
            f"Use less memory per rank, fewer ranks, or raise the memory limit"
        )
