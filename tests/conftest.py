"""Shared fixtures: every test must leave no child process and no changed environment."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from helpers import is_mp_helper

_GRACE_S = 5.0

# A suite started in the background of a non-interactive shell (`make test &`) inherits
# SIGINT ignored, and so would every launcher a test starts: icelaunch keeps an ignored
# SIGINT ignored, and the Ctrl-C tests would wait in vain. Tests run as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _children() -> list[psutil.Process]:
    try:
        found = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in found if not is_mp_helper(p)]


def wait_no_children(timeout: float = _GRACE_S) -> list[psutil.Process]:
    """Children still alive after ``timeout`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in _children() if _running(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaks child processes, environment variables or signal handlers."""
    env_before = dict(os.environ)
    handlers_before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    leftover = wait_no_children()
    for proc in leftover:
        proc.kill()
    assert not leftover, f"child processes survived the test: {leftover}"
    env_after = dict(os.environ)
    env_after.pop("PYTEST_CURRENT_TEST", None)
    env_before.pop("PYTEST_CURRENT_TEST", None)
    assert env_after == env_before, "the test changed os.environ"
    handlers_after = {s: signal.getsignal(s) for s in handlers_before}
    assert handlers_after == handlers_before, "the test left signal handlers changed"
