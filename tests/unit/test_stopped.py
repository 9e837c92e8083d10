"""LaunchStopped: its classes, exit status and message, and how it pickles."""

from __future__ import annotations

import pickle
import signal

import pytest

import icelaunch
from icelaunch import LaunchStopped


def test_sigint_is_a_keyboard_interrupt_and_others_a_system_exit() -> None:
    interrupted = LaunchStopped.of("stopped", signal.SIGINT)
    terminated = LaunchStopped.of("stopped", signal.SIGTERM, {0: 0, 1: -9}, frozenset({1}))
    assert isinstance(interrupted, KeyboardInterrupt) and isinstance(interrupted, LaunchStopped)
    assert not isinstance(interrupted, SystemExit)
    assert isinstance(terminated, SystemExit) and isinstance(terminated, LaunchStopped)
    assert terminated.code == 143 == terminated.exit_status
    assert interrupted.exit_status == 130
    assert not isinstance(terminated, Exception)  # `except Exception` does not swallow a stop
    assert terminated.clean_ranks == {0} and terminated.killed_ranks == {1}
    assert type(terminated).__name__ == "LaunchStopped"
    assert repr(type(terminated)) == "<class 'icelaunch.LaunchStopped'>"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_it_pickles_with_its_details(sig: int) -> None:
    stop = LaunchStopped.of("the launch was stopped", sig, {0: 0}, frozenset({2}))
    stop.values = {0: 17}
    back = pickle.loads(pickle.dumps(stop))
    assert back.values == {0: 17}
    assert type(back) is type(stop)
    assert (str(back), back.signal, back.exits, back.killed_ranks) == (
        "the launch was stopped",
        sig,
        {0: 0},
        {2},
    )


def test_the_old_name_still_catches_it() -> None:
    with pytest.raises(icelaunch.LaunchInterruptedError):
        raise LaunchStopped.of("stopped", signal.SIGHUP)


def test_uncaught_it_ends_a_program_with_128_plus_the_signal() -> None:
    with pytest.raises(SystemExit) as info:
        raise LaunchStopped.of("stopped", signal.SIGTERM)
    assert info.value.code == 128 + signal.SIGTERM
