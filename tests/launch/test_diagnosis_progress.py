"""The hang rule's /proc half on real processes: computing, waking up, asleep, a wrapper.

Each case starts plain child processes (no launch), looks twice with one
:class:`Meter` and ends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from icelaunch._diagnosis._progress import Meter

pytestmark = pytest.mark.timeout(120)

SPIN = "import time\nt = time.monotonic() + 60\nwhile time.monotonic() < t: pass"
PROGRAMS = {  # what runs, whether it moves
    "computes in pure Python": ([sys.executable, "-c", SPIN], True),
    "computes in torch": (
        [
            sys.executable,
            "-c",
            "import torch\na = torch.randn(800, 800)\nwhile True: a = torch.tanh(a @ a)",
        ],
        True,
    ),
    "wakes up every 10 ms": (
        [sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"],
        True,
    ),
    "sleeps": (["sleep", "600"], False),
    "reads a pipe nobody writes": ([sys.executable, "-c", "import os\nos.read(0, 1)"], False),
    "waits for a child that computes": (["sh", "-c", f'{sys.executable} -c "{SPIN}"; true'], True),
    "waits for a child that sleeps": (["sh", "-c", "sleep 600; true"], False),
}


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # a session of its own: the shell's child is in its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("case", list(PROGRAMS))
def test_what_moves(case: str, started: list[subprocess.Popen[bytes]]) -> None:
    argv, moves = PROGRAMS[case]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    started.append(proc)
    time.sleep(3.0)  # past the interpreter's start-up (torch's import included)
    meter = Meter()
    meter.moved({0: proc.pid})  # the first look: what it used since it started
    time.sleep(1.0)
    assert meter.moved({0: proc.pid}) is moves, meter.why
    if moves and "child" in case:  # the shell only waits: its child moved
        assert meter.why.startswith("a process a rank started"), meter.why
