"""Failure reports: torch's error files, restart warnings, restarts used up."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

FAST = {"monitor_interval": 0.5}


def _refuse() -> None:
    raise RuntimeError("this argument refuses to be unpickled")


class UnpicklableInWorker:
    """Pickles in the launcher; unpickling it (in the worker) raises."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def takes(arg: object) -> None:
    """Never runs: the argument cannot be unpickled in the worker."""


def test_argument_that_cannot_be_unpickled_in_the_worker_is_reported() -> None:
    """torch's @record writes an error file; its message is a dict."""
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(takes, UnpicklableInWorker())
    err = info.value
    text = str(err)  # must not raise on the dict message
    assert "this argument refuses to be unpickled" in text
    assert "this argument refuses to be unpickled" in err.first.message
    assert "_refuse" in err.first.traceback
    assert err.first.exitcode == 1


def fail_rank_one(launcher: ElasticLauncher) -> int:
    if launcher.rank == 1:
        raise ValueError(f"attempt {launcher.restart_count} fails")
    return 0


def test_restarts_are_announced_and_used_up(caplog: pytest.LogCaptureFixture) -> None:
    launcher = ElasticLauncher("cpu:0-1", max_restarts=2, **FAST).freeze()
    with (
        caplog.at_level(logging.WARNING, logger="icelaunch"),
        pytest.raises(WorkerFailedError) as info,
    ):
        launcher(fail_rank_one, launcher)
    warnings = [
        r.getMessage() for r in caplog.records if "restarting the workers" in r.getMessage()
    ]
    assert len(warnings) == 2, warnings
    assert "rank 1" in warnings[0] and "ValueError: attempt 0 fails" in warnings[0]
    assert "(restart 1/2)" in warnings[0]
    assert "ValueError: attempt 1 fails" in warnings[1] and "(restart 2/2)" in warnings[1]
    assert info.value.restarts == 2
    assert "after 2 restart(s): max_restarts used up" in str(info.value)
    assert "attempt 2 fails" in info.value.first.message
