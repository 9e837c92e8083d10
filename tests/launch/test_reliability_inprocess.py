"""Failures and clean shutdown of launches from the test process: nothing hangs,
nothing is left running or hidden, the caller's state is restored.

Latencies are recorded (``-s`` shows them) but asserted only against generous
bounds that torch's own behaviour (hang forever, 30 s shutdown timeout) breaks."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

# Far below torch's 30 s shutdown timeout and its endless hangs, far above noise.
BOUND_S = 15.0


def fail_one_rank(launcher: ElasticLauncher, how: str, peers: str, stamp: str) -> int:
    dist.barrier()  # everyone is up; now rank 1 fails while the others carry on
    if launcher.rank != 1:
        if peers == "collective":
            dist.all_reduce(torch.ones(1))  # blocks: rank 1 never joins
        time.sleep(120)
        return 0
    Path(stamp).write_text(str(time.time()))
    if how == "raise":
        raise ValueError("deliberate failure")
    if how == "sys.exit":
        sys.exit(3)
    if how == "os._exit(3)":
        os._exit(3)
    if how == "os._exit(0)":
        os._exit(0)
    if how == "SIGSEGV":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "unpicklable":
        return threading.Lock()  # type: ignore[return-value]
    raise AssertionError(how)


EXPECTED = {
    "raise": ("builtins.ValueError", None),
    "sys.exit": ("builtins.SystemExit", None),
    "os._exit(3)": (None, None),
    "os._exit(0)": (None, None),
    "SIGSEGV": (None, "SIGSEGV"),
    "SIGKILL": (None, "SIGKILL"),
    "unpicklable": ("builtins.TypeError", None),
}


CASES = [(how, peers, "spawn") for how in EXPECTED for peers in ("collective", "sleeping")]
# fork: torch's case of 30 s, forked peers that ignore SIGTERM inside a collective
CASES += [("raise", "collective", "fork"), ("SIGKILL", "collective", "fork")]


@pytest.mark.parametrize(("how", "peers", "start_method"), CASES)
def test_any_failure_ends_the_launch_quickly(
    tmp_path: Path, how: str, peers: str, start_method: str
) -> None:
    stamp = tmp_path / "failed_at"
    launcher = ElasticLauncher("cpu:0-2", start_method=start_method).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(fail_one_rank, launcher, how, peers, str(stamp))
    latency = time.time() - float(stamp.read_text())
    print(f"\n{how:12} {peers:10} {start_method:6} failure -> raise: {latency:.2f} s")
    assert latency < BOUND_S
    detail = info.value.details[1]
    exc_type, signal_name = EXPECTED[how]
    assert detail.exc_type == exc_type
    assert detail.signal_name == signal_name
    if how == "os._exit(3)":
        assert detail.exitcode == 3
    if how == "os._exit(0)":
        assert "before its function returned" in detail.message
    if how == "raise":
        assert isinstance(info.value.exceptions[1], ValueError)
        assert "deliberate failure" in str(info.value)


def succeed(launcher: ElasticLauncher) -> int:
    return int(launcher.rank)


def fail(launcher: ElasticLauncher) -> None:
    raise RuntimeError("no")


def _handler(signum: int, frame: Any) -> None:
    """A caller's own handler, which must survive launches."""


def test_caller_state_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    old = {s: signal.signal(s, _handler) for s in sigs}
    try:
        env = dict(os.environ)
        launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
        assert launcher(succeed, launcher) == {0: 0, 1: 1}
        with pytest.raises(WorkerFailedError):
            launcher(fail, launcher)
        assert {s: signal.getsignal(s) for s in sigs} == dict.fromkeys(sigs, _handler)
        assert dict(os.environ) == env
        assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in os.environ
        assert [p for p in tmp_path.iterdir() if not p.name.startswith("pymp-")] == []
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_ctrl_c_still_works_after_a_launch() -> None:
    launcher = ElasticLauncher("cpu", monitor_interval=0.5).freeze()
    launcher(succeed, launcher)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)


def test_launch_from_a_thread() -> None:
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(launcher(succeed, launcher)))
    thread.start()
    thread.join(120)
    assert results == [{0: 0, 1: 1}]


def test_thirty_two_workers_on_two_cores() -> None:
    from helpers import all_reduce_sum

    launcher = ElasticLauncher("cpu:0-31", monitor_interval=0.5).freeze()
    results = launcher(all_reduce_sum, launcher)
    assert results == {r: 32 * 33 / 2 for r in range(32)}
