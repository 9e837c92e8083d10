"""The stack signal's handler, seen in /proc as the launcher sees it (this very process)."""

from __future__ import annotations

import os
import signal

import pytest

from icelaunch._diagnosis import _proc
from icelaunch._rundir import STACK_SIGNAL

pytestmark = pytest.mark.timeout(60)


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


def test_a_process_gone_is_neither_seen_nor_signalled() -> None:
    gone = 2**22 + 1  # above the largest pid Linux hands out
    assert _proc.usage(gone) is None
    assert not _proc.catches(gone, signal.SIGURG)
