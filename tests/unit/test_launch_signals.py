"""A launch's signals while it starts: a stop is noted, then raised where it is safe."""

from __future__ import annotations

import signal

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException

from icelaunch._engine import _signals


def test_a_stop_while_held_is_noted_and_raised_at_the_next_safe_point() -> None:
    with _signals.held() as signals:
        signal.raise_signal(signal.SIGINT)  # e.g. inside torch's import: nothing raised there
        assert signals.requested == signal.SIGINT
        with pytest.raises(SignalException) as raised:
            signals.raise_requested()
        assert raised.value.sigval == signal.SIGINT
        signals.raise_requested()  # raised once
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_while_a_rendezvous_waits_is_raised_at_once() -> None:
    with _signals.held() as signals:
        with pytest.raises(SignalException), signals.answering():
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)  # a stop was raised already: only noted
        assert signals.last == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_stop_noted_before_a_wait_is_raised_when_it_begins() -> None:
    with _signals.held() as signals:
        signal.raise_signal(signal.SIGINT)
        with pytest.raises(SignalException), signals.answering():
            pytest.fail("the wait began")


def test_a_stop_never_raised_goes_to_the_callers_handler_at_the_end() -> None:
    with pytest.raises(KeyboardInterrupt), _signals.held():
        signal.raise_signal(signal.SIGINT)  # then the launch ended otherwise
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_the_caller_ignores_stays_ignored_while_held() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _signals.held() as signals:
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert signals.requested is None
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_a_stop_inside_a_block_that_must_not_be_cut_is_raised_after_it() -> None:
    finished = []
    with _signals.held() as signals:
        signals.install(lambda sig: None)  # the workers run: a stop raises at once
        with pytest.raises(SignalException), signals.deferred():
            signal.raise_signal(signal.SIGINT)
            finished.append(True)
    assert finished
