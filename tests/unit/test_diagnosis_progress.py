"""The hang rule's /proc half, on this very process: CPU time, wake-ups, signal handlers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from icelaunch._diagnosis import _proc
from icelaunch._diagnosis._progress import SAMPLING_WAKES, Meter
from icelaunch._rundir import STACK_SIGNAL

pytestmark = pytest.mark.timeout(60)

ME = {0: os.getpid()}


@pytest.fixture
def meter() -> Iterator[Meter]:
    meter = Meter()
    assert meter.moved(ME)  # a process seen for the first time counts with all it used
    yield meter


def test_a_process_that_computes_moved(meter: Meter) -> None:
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # one line, no system call, no wait: still computing
        pass
    assert meter.moved(ME)
    assert meter.why == "rank 0 computes or wakes up"


def test_a_process_asleep_did_not_move(meter: Meter) -> None:
    time.sleep(1.0)
    assert not meter.moved(ME)


def test_a_process_that_keeps_waking_up_moved(meter: Meter) -> None:
    for _ in range(SAMPLING_WAKES + 5):
        time.sleep(0.01)
    assert meter.moved(ME)


def test_a_process_gone_did_not_move() -> None:
    assert _proc.usage(2**22 + 1) is None
    assert not Meter().moved({0: 2**22 + 1})


def test_catches_sees_a_handler_come_and_go() -> None:
    assert STACK_SIGNAL == signal.SIGURG
    before = signal.getsignal(STACK_SIGNAL)
    try:
        signal.signal(STACK_SIGNAL, signal.SIG_DFL)
        assert not _proc.catches(os.getpid(), STACK_SIGNAL)
        signal.signal(STACK_SIGNAL, lambda *_: None)
        assert _proc.catches(os.getpid(), STACK_SIGNAL)
        signal.signal(STACK_SIGNAL, signal.SIG_IGN)
        assert not _proc.catches(os.getpid(), STACK_SIGNAL)
    finally:
        signal.signal(STACK_SIGNAL, before)
