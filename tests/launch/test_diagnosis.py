"""Every stop explains itself: real hangs, real crashes, real stacks from real ranks.

Each job's ranks write their pid to a folder before they block, so every test
can prove that no rank outlived the launch (the fork server's children are not
seen by the conftest check, which skips multiprocessing's helpers).
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import assert_gone, pid_files, wait_for_pid_files
from icelaunch import ElasticLauncher, LaunchTimeoutError, WorkerFailedError
from icelaunch._rundir import STACK_SIGNAL

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

THIS_FILE = os.path.abspath(__file__)
SLACK_S = 20.0  # start-up and stop on a loaded two-core machine
TIMEOUT_S = 15  # above the ranks' start-up on a loaded machine (a few seconds)


def _here(folder: str, rank: int) -> None:
    """Say "this rank is about to block" (and its pid) to the test."""
    Path(folder, f"{rank}.pid").write_text(str(os.getpid()))


assert_all_gone = assert_gone


# ---- what the ranks run -------------------------------------------------------


def stuck_in_sleep() -> None:
    time.sleep(600)


def spinning_in_python() -> None:
    while True:  # one instruction: every sample sees the same line
        pass


def blocked_on_a_lock() -> None:
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()  # never released


def blocked_reading_a_pipe() -> None:
    r, _w = os.pipe()  # nobody writes (the write end stays open): the read waits forever
    os.read(r, 1)


def rank1_sleeps_others_all_reduce(launcher: ElasticLauncher, folder: str) -> None:
    _here(folder, launcher.rank)
    if launcher.rank == 1:
        stuck_in_sleep()
    dist.all_reduce(torch.ones(1))


def eight_ranks(launcher: ElasticLauncher, folder: str) -> None:
    """Blocked every way a rank can be: a collective, a sleep, a lock, I/O."""
    _here(folder, launcher.rank)
    if launcher.rank == 3:
        stuck_in_sleep()
    if launcher.rank == 5:
        blocked_on_a_lock()
    if launcher.rank == 6:
        blocked_reading_a_pipe()
    dist.all_reduce(torch.ones(1))


def rank1_spins_others_all_reduce(launcher: ElasticLauncher, folder: str) -> None:
    _here(folder, launcher.rank)
    if launcher.rank == 1:
        spinning_in_python()
    dist.all_reduce(torch.ones(1))


def computes(launcher: ElasticLauncher, seconds: float) -> int:
    """The issue's loop: matmuls of 0.1 s and more, no system call, no wait, one line."""
    torch.manual_seed(launcher.rank)
    a, w = torch.randn(1200, 1200), torch.randn(1200, 1200) / 40
    steps, end = 0, time.monotonic() + seconds  # (the clock is read without a system call)
    while time.monotonic() < end:
        a = torch.tanh(a @ w)
        steps += 1
    return steps


def handles_the_stack_signal_itself(launcher: ElasticLauncher, folder: str) -> None:
    assert STACK_SIGNAL is not None
    signal.signal(STACK_SIGNAL, lambda *_: None)
    rank1_sleeps_others_all_reduce(launcher, folder)


def mismatched(launcher: ElasticLauncher, folder: str) -> None:
    _here(folder, launcher.rank)
    t = torch.ones(1000)
    if launcher.rank == 0:
        dist.all_reduce(t)
    else:
        dist.broadcast(t, src=1)
    time.sleep(600)  # should a mismatch go through, the ranks still hang here


def one_fails_while_others_wait(launcher: ElasticLauncher, folder: str) -> None:
    """Ranks 0 and 1 block in a group of their own; rank 2 fails once they do."""
    pair = dist.new_group([0, 1])
    if launcher.rank == 2:
        deadline = time.monotonic() + 120
        while len(list(Path(folder).glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # let them enter the calls
        raise ValueError("rank 2 gives up")
    _here(folder, launcher.rank)
    if launcher.rank == 1:
        stuck_in_sleep()
    dist.all_reduce(torch.ones(1), group=pair)


def crash_in_native_code(launcher: ElasticLauncher) -> None:
    dist.barrier()
    if launcher.rank == 1:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    time.sleep(600)


def crash_with_own_faulthandler(launcher: ElasticLauncher) -> None:
    faulthandler.enable()  # the program's own: to stderr, in place of icelaunch's file
    crash_in_native_code(launcher)


# ---- stacks at a time limit -----------------------------------------------------


def test_timeout_names_file_function_and_line_of_the_stuck_rank(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-2", timeout=TIMEOUT_S).freeze()
    start = time.monotonic()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(rank1_sleeps_others_all_reduce, launcher, str(tmp_path))
    took = time.monotonic() - start
    pids = pid_files(tmp_path)
    assert_all_gone(pids)
    assert len(pids) == 3, f"the ranks had not all started within {TIMEOUT_S} s (overloaded?)"
    err = info.value
    assert isinstance(err, WorkerFailedError) and isinstance(err, TimeoutError)
    assert err.reason == "timeout"
    assert took < TIMEOUT_S + SLACK_S
    assert sorted(err.stacks) == [0, 1, 2]
    message = str(err)
    assert f"timeout={TIMEOUT_S} s" in message
    first = message.index("rank 1: time.sleep(600)  (test_diagnosis.py:")
    assert "in stuck_in_sleep)" in message[first:]
    assert message.index("ranks 0,2: dist.all_reduce(torch.ones(1))") > first  # odd one first
    line = stuck_in_sleep.__code__.co_firstlineno + 1
    assert f'> File "{THIS_FILE}", line {line}, in stuck_in_sleep' in err.stacks[1]
    assert "icelaunch/_worker/" not in message  # icelaunch's bootstrap is left out
    print(f"\ntimeout={TIMEOUT_S}: raised after {took:.1f} s\n{message}")


def test_hang_timeout_judges_eight_ranks_hung_and_groups_them(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-7", hang_timeout=3, timeout=120).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(eight_ranks, launcher, str(tmp_path))
    assert_all_gone(pid_files(tmp_path))
    err = info.value
    assert err.reason == "hang", str(err)
    message = str(err)
    assert "no rank computed, woke up from a wait or changed its Python stack" in message
    assert "hang_timeout=3 s" in message
    assert "\nrank 3: time.sleep(600)  (test_diagnosis.py:" in message
    assert "\nrank 5: lock.acquire()  # never released  (test_diagnosis.py:" in message
    assert "\nrank 6: os.read(r, 1)  (test_diagnosis.py:" in message
    assert "\nranks 0-2,4,7: dist.all_reduce(torch.ones(1))" in message
    assert message.index("rank 3:") < message.index("ranks 0-2,4,7:")
    assert sorted(err.stacks) == list(range(8))
    assert "in blocked_on_a_lock" in err.stacks[5] and "in blocked_reading_a_pipe" in err.stacks[6]


def test_hang_timeout_leaves_a_busy_compute_loop_alone() -> None:
    # each step is matmuls on one line, without a system call or a wait: every stack
    # sample is the same and the main thread never sleeps, yet the ranks compute
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=3).freeze()
    steps = launcher(computes, launcher, 12.0)
    assert sorted(steps) == [0, 1] and min(steps.values()) > 0


def test_a_rank_spinning_in_python_counts_as_computing(tmp_path: Path) -> None:
    # from outside a busy-wait is a computation (CPU time, one line): not judged hung,
    # the job runs on until its timeout, which then shows where every rank was
    # (6 hang_timeouts: more than enough for a false verdict to show)
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=2, timeout=12).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(rank1_spins_others_all_reduce, launcher, str(tmp_path))
    assert_all_gone(pid_files(tmp_path))
    err = info.value
    assert err.reason == "timeout", str(err)
    assert "in spinning_in_python" in err.stacks[1]
    assert "dist.all_reduce(torch.ones(1))" in err.stacks[0]


def test_a_job_that_handles_the_stack_signal_itself_is_still_judged_hung(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=3, timeout=120).freeze()
    with (
        caplog.at_level(logging.WARNING, logger="icelaunch._diagnosis._watch"),
        pytest.raises(LaunchTimeoutError) as info,
    ):
        launcher(handles_the_stack_signal_itself, launcher, str(tmp_path))
    assert_all_gone(pid_files(tmp_path))
    err = info.value
    assert err.reason == "hang", str(err)
    note = "(no stack: it did not answer the stack signal (SIGURG) within 1 s; does its"
    assert f"ranks 0-1: {note}" in str(err)
    assert err.stacks[0].startswith(note) and err.stacks[1].startswith(note)
    warned = [r.getMessage() for r in caplog.records]
    for rank in (0, 1):  # said once per rank
        assert sum(m.startswith(f"rank {rank} did not answer the stack") for m in warned) == 1


def test_mismatched_collectives_show_each_ranks_call(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=3).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(mismatched, launcher, str(tmp_path))
    assert_all_gone(pid_files(tmp_path))
    stacks = info.value.stacks
    assert "dist.all_reduce(t)" in stacks[0] or "time.sleep(600)" in stacks[0]
    assert "dist.broadcast(t, src=1)" in stacks[1] or "time.sleep(600)" in stacks[1]
    print("\n" + str(info.value))


def test_launch_timeout_error_pickles_with_its_stacks(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=2).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(rank1_sleeps_others_all_reduce, launcher, str(tmp_path))
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is LaunchTimeoutError
    assert again.stacks == info.value.stacks and again.reason == "hang"
    assert str(again) == str(info.value)


# ---- stacks at a peer failure, collective timeout, native crash -------------------


def test_peer_failure_reports_where_the_running_ranks_were(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-2").freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(one_fails_while_others_wait, launcher, str(tmp_path))
    assert_all_gone(pid_files(tmp_path))
    err = info.value
    assert not isinstance(err, LaunchTimeoutError)
    assert err.first.rank == 2 and "rank 2 gives up" in err.first.message
    assert sorted(err.stacks) == [0, 1]
    assert "in stuck_in_sleep" in err.stacks[1]
    assert "dist.all_reduce(torch.ones(1), group=pair)" in err.stacks[0]
    assert "where the running ranks were when they were stopped:" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert again.stacks == err.stacks


def test_collective_timeout_reaches_init_process_group(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-1", collective_timeout=3).freeze()
    start = time.monotonic()
    with pytest.raises(WorkerFailedError) as info:
        launcher(rank1_sleeps_others_all_reduce, launcher, str(tmp_path))
    took = time.monotonic() - start
    assert_all_gone(pid_files(tmp_path))
    err = info.value
    assert err.first.rank == 0 and err.first.exc_type is not None
    assert "timed out" in err.first.message.lower() or "timeout" in err.first.message.lower()
    assert "in stuck_in_sleep" in err.stacks[1]
    assert took < 3 + SLACK_S


def test_segfault_reports_the_python_stack_at_the_crash() -> None:
    launcher = ElasticLauncher("cpu:0-1").freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(crash_in_native_code, launcher)
    detail = info.value.details[1]
    assert detail.signal_name == "SIGSEGV"
    assert "Fatal Python error: Segmentation fault" in detail.traceback
    line = crash_in_native_code.__code__.co_firstlineno + 3
    assert f'> File "{THIS_FILE}", line {line}, in crash_in_native_code' in detail.traceback
    assert "ctypes.string_at(0)" in detail.traceback
    assert "icelaunch/_worker/" not in detail.traceback


def test_a_segfault_under_the_programs_own_faulthandler_still_reports_its_stack() -> None:
    launcher = ElasticLauncher("cpu:0-1").freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(crash_with_own_faulthandler, launcher)
    detail = info.value.details[1]
    assert detail.signal_name == "SIGSEGV"
    assert "Fatal Python error: Segmentation fault" in detail.traceback
    line = crash_in_native_code.__code__.co_firstlineno + 3
    assert f'> File "{THIS_FILE}", line {line}, in crash_in_native_code' in detail.traceback
    assert "in crash_with_own_faulthandler" in detail.traceback
    assert "crashed in native code (SIGSEGV)" in detail.message


def test_a_plain_sigkill_stays_a_sigkill() -> None:
    launcher = ElasticLauncher("cpu:0-1").freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(killed_by_sigkill, launcher)
    detail = info.value.details[1]
    assert detail.signal_name == "SIGKILL"
    assert "out-of-memory" not in str(info.value)


def killed_by_sigkill(launcher: ElasticLauncher) -> None:
    if launcher.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)


def fails_once(launcher: ElasticLauncher, folder: str) -> int:
    if launcher.restart_count == 0:
        _here(folder, launcher.rank)
        if launcher.rank == 1:
            wait_for_pid_files(Path(folder), 2)
            time.sleep(0.5)
            raise ValueError("first attempt fails")
        stuck_in_sleep()
    return int(launcher.rank)


def test_a_restart_logs_where_the_running_ranks_were(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # two restarts: gloo's set-up sometimes fails once (pytorch#53270)
    launcher = ElasticLauncher("cpu:0-1", max_restarts=2).freeze()
    with caplog.at_level("WARNING", logger="icelaunch._engine._agent"):
        assert launcher(fails_once, launcher, str(tmp_path)) == {0: 0, 1: 1}
    assert_all_gone(pid_files(tmp_path))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "where the running ranks were:\nrank 0: time.sleep(600)" in logged


def busy_training(launcher: ElasticLauncher, steps: int) -> int:
    t = torch.ones(1000)
    for _ in range(steps):
        dist.all_reduce(t)  # nearly every stack sample lands here, yet the job progresses
    return steps


def test_hang_timeout_leaves_a_busy_training_loop_alone() -> None:
    launcher = ElasticLauncher("cpu:0-3", hang_timeout=1).freeze()
    assert launcher(busy_training, launcher, 2000) == dict.fromkeys(range(4), 2000)
