"""The semaphores behind torch's return queues are named after their launcher, so that
a launch can remove those a launcher killed outright left in /dev/shm (issue 23,
point 10). Only names made by these tests are touched."""

from __future__ import annotations

import os
import subprocess
from multiprocessing import process, synchronize
from pathlib import Path

from icelaunch._engine import _procs


def test_semaphores_made_while_workers_start_are_named_after_their_launcher() -> None:
    tag = _procs.SEM_PREFIX + _procs._owner_tag(os.getpid())
    with _procs.semaphores_named_for_sweep():
        with _procs.semaphores_named_for_sweep():  # a second launch from another thread
            assert synchronize.SemLock._make_name().startswith(tag + "-")  # type: ignore[attr-defined]
        assert synchronize.SemLock._make_name().startswith(tag + "-")  # type: ignore[attr-defined]
    assert process.current_process()._config["semprefix"] == "/mp"  # type: ignore[attr-defined]


def _fake_semaphore(tag: str) -> Path:
    path = Path(_procs.SHM_DIR, "sem." + _procs.SEM_PREFIX[1:] + tag + "-unittest")
    path.write_bytes(b"\0" * 32)
    return path


def test_only_the_names_of_launchers_that_are_gone_are_swept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    namespace, pid, start = _procs._owner_tag(os.getpid()).split(".")
    alive = _fake_semaphore(f"{namespace}.{pid}.{start}")
    dead = _fake_semaphore(f"{namespace}.{gone.pid}.{start}")
    reused = _fake_semaphore(f"{namespace}.{pid}.{int(start) - 1}")  # our pid, earlier
    elsewhere = _fake_semaphore(f"{int(namespace) + 1}.{gone.pid}.{start}")  # a container's
    try:
        removed = _procs.sweep_orphaned_semaphores()
        assert {dead.name, reused.name} <= set(removed)
        assert alive.name not in removed and elsewhere.name not in removed
        assert alive.exists() and elsewhere.exists()
        assert not dead.exists() and not reused.exists()
    finally:
        for path in (alive, dead, reused, elsewhere):
            path.unlink(missing_ok=True)
