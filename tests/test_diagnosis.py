"""Every stop explains itself: real hangs, real crashes, real stacks from real ranks.

Each job's ranks write their pid to a folder before they block, so every test
can prove that no rank outlived the launch (the fork server's children are not
seen by the conftest check, which skips multiprocessing's helpers).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import re
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

import icelaunch
from icelaunch import ElasticLauncher, LaunchTimeoutError, WorkerFailedError
from icelaunch._diagnosis import _format
from tests_helpers import assert_gone

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

THIS_FILE = os.path.abspath(__file__)
SLACK_S = 20.0  # start-up and stop on a loaded two-core machine
TIMEOUT_S = 25  # above the ranks' start-up on a loaded machine


def _here(folder: str, rank: int) -> None:
    """Say "this rank is about to block" (and its pid) to the test."""
    Path(folder, f"{rank}.pid").write_text(str(os.getpid()))


def _pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("*.pid")]


def _wait_for(folder: Path, count: int, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.pid"))) < count:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(proc.communicate()[0])
        assert time.monotonic() < deadline, "the ranks did not get going"
        time.sleep(0.05)


assert_all_gone = assert_gone


# ---- what the ranks run -------------------------------------------------------


def stuck_in_sleep() -> None:
    time.sleep(600)


def spinning_in_python() -> None:
    while True:  # one instruction: every sample sees the same line
        pass


def rank1_sleeps_others_all_reduce(launcher: ElasticLauncher, folder: str) -> None:
    _here(folder, launcher.rank)
    if launcher.rank == 1:
        stuck_in_sleep()
    dist.all_reduce(torch.ones(1))


def eight_ranks(launcher: ElasticLauncher, folder: str) -> None:
    _here(folder, launcher.rank)
    if launcher.rank == 3:
        stuck_in_sleep()
    if launcher.rank == 5:
        spinning_in_python()
    dist.all_reduce(torch.ones(1))


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


# ---- stacks at a time limit -----------------------------------------------------


def test_timeout_names_file_function_and_line_of_the_stuck_rank(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-2", timeout=TIMEOUT_S).freeze()
    start = time.monotonic()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(rank1_sleeps_others_all_reduce, launcher, str(tmp_path))
    took = time.monotonic() - start
    pids = _pids(tmp_path)
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
    launcher = ElasticLauncher("cpu:0-7", hang_timeout=3).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(eight_ranks, launcher, str(tmp_path))
    assert_all_gone(_pids(tmp_path))
    err = info.value
    assert err.reason == "hang"
    message = str(err)
    assert "no rank's Python stack changed" in message and "hang_timeout=3 s" in message
    assert "\nrank 3: time.sleep(600)  (test_diagnosis.py:" in message
    assert re.search(r"\nrank 5: .*\(test_diagnosis\.py:\d+ in spinning_in_python\)", message)
    assert "\nranks 0-2,4,6-7: dist.all_reduce(torch.ones(1))" in message
    assert message.index("rank 3:") < message.index("ranks 0-2,4,6-7:")
    assert sorted(err.stacks) == list(range(8))
    assert "in spinning_in_python" in err.stacks[5]


def test_mismatched_collectives_show_each_ranks_call(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-1", hang_timeout=3).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(mismatched, launcher, str(tmp_path))
    assert_all_gone(_pids(tmp_path))
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
    assert_all_gone(_pids(tmp_path))
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
    assert_all_gone(_pids(tmp_path))
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


# ---- driver processes: Ctrl-C, `icelaunch stacks`, functions from __main__ --------

DRIVER = """
import os, sys, time
from pathlib import Path
import torch, torch.distributed as dist
from icelaunch import ElasticLauncher

def waits_for_rank_one(launcher, folder):
    Path(folder, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    if launcher.rank == 1:
        time.sleep(600)
    dist.all_reduce(torch.ones(1))

def trains_until_told(launcher, folder):
    Path(folder, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    steps = 0
    while True:  # every rank stops at the same step: once any of them saw "finish"
        t = torch.tensor([float(Path(folder, "finish").exists())])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        steps += 1
        if t.item() > 0 and steps >= 50:
            return steps
        time.sleep(0.002)

def raises_in_main(launcher, folder):
    Path(folder, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    raise ValueError(f"rank {launcher.rank} raised")

if __name__ == "__main__":
    fn = globals()[sys.argv[1]]
    launcher = ElasticLauncher("cpu:0-2").freeze()
    try:
        result = launcher(fn, launcher, sys.argv[2])
    except KeyboardInterrupt:
        print("KeyboardInterrupt raised in the caller", flush=True)
        sys.exit(130)
    print("result", sorted(result), flush=True)
"""


def _driver(tmp_path: Path, fn: str) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    folder = tmp_path / "ranks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), fn, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for(folder, 3, proc)
    return proc, folder


def test_ctrl_c_prints_the_grouped_stacks_before_keyboard_interrupt(tmp_path: Path) -> None:
    proc, folder = _driver(tmp_path, "waits_for_rank_one")
    time.sleep(0.5)  # into the calls
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert_all_gone(_pids(folder))
    assert proc.returncode == 130, out
    view = out.index("where the running ranks were:")
    assert out.index("KeyboardInterrupt raised in the caller") > view
    script = str(tmp_path / "driver.py")
    # a function of __main__ goes by value, and still shows its real file and line
    assert f'> File "{script}", line 10, in waits_for_rank_one' in out
    assert "rank 1: time.sleep(600)  (driver.py:10 in waits_for_rank_one)" in out
    assert "ranks 0,2: dist.all_reduce(torch.ones(1))  (driver.py:11 in" in out
    assert "<dynamic-code>" not in out


def test_traceback_of_a_function_from_main_names_its_real_file(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    argv = [sys.executable, str(script), "raises_in_main", str(tmp_path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120).stderr
    assert_all_gone(_pids(tmp_path))
    assert f'File "{script}", line 26, in raises_in_main' in out
    assert "<dynamic-code>" not in out
    # icelaunch's bootstrap frames are left out (a retried gloo set-up failure may
    # have printed some: look only at the tracebacks of the function)
    for block in out.split("Traceback (most recent call last):")[1:]:
        if "in raises_in_main" in block:
            assert "icelaunch/_worker/" not in block, block


def _icelaunch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icelaunch", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_icelaunch_stacks_from_another_process_leaves_the_job_running(tmp_path: Path) -> None:
    proc, folder = _driver(tmp_path, "trains_until_told")
    try:
        for _ in range(5):
            shown = _icelaunch("stacks", str(proc.pid))
            assert shown.returncode == 0, shown.stderr
            assert f"launch {proc.pid}" in shown.stdout
            assert "in trains_until_told" in shown.stdout
        everything = _icelaunch("stacks")
        assert f"launch {proc.pid}" in everything.stdout
    finally:
        (folder / "finish").write_text("")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "result [0, 1, 2]" in out
    assert_all_gone(_pids(folder))


def test_icelaunch_stacks_of_no_launch_says_so() -> None:
    shown = _icelaunch("stacks", "1")
    assert shown.returncode == 1
    assert "no icelaunch launch with pid 1" in shown.stderr


# ---- pure helpers ------------------------------------------------------------------

DUMP = """\
Thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/lib/python3.11/threading.py", line 1002 in _bootstrap

Current thread 0x00007f0000000001 (most recent call first):
  File "{site}/torch/distributed/distributed_c10d.py", line 3252 in all_reduce
  File "/home/u/train.py", line 120 in step
  File "/home/u/train.py", line 131 in main
  File "{icelaunch}/_worker/_run.py", line 292 in _run_in_group
  File "/usr/lib/python3.11/multiprocessing/process.py", line 108 in run
  File "<string>", line 1 in <module>
"""


def test_dump_is_parsed_trimmed_and_marked() -> None:
    icelaunch_dir = os.path.dirname(icelaunch.__file__)
    site = sysconfig.get_paths()["purelib"]
    text = _format.stack_text(DUMP.format(icelaunch=icelaunch_dir, site=site))
    assert text.splitlines() == [
        '  File "/home/u/train.py", line 131, in main',
        '> File "/home/u/train.py", line 120, in step',
        f'  File "{site}/torch/distributed/distributed_c10d.py", line 3252, in all_reduce',
    ]
    grouped = _format.group_texts({0: text, 1: "other", 2: text}, expected=[0, 1, 2, 3])
    assert grouped.splitlines()[0] == "rank 1: other"
    assert "ranks 0,2: train.py:120 in step" in grouped
    assert grouped.splitlines()[-1].startswith("rank 3: no stack")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("timeout", 0, "invalid timeout 0: must be a positive number of seconds or None"),
        ("hang_timeout", -1.5, "invalid hang_timeout -1.5: must be a positive number"),
        ("collective_timeout", float("inf"), "invalid collective_timeout inf: must be a posit"),
        ("timeout", "60", "timeout must be int or float, not '60'; e.g. timeout=3600"),
        ("hang_timeout", True, "hang_timeout must be int, not True; e.g. hang_timeout=300"),
    ],
)
def test_time_limits_are_validated_at_freeze(name: str, value: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        ElasticLauncher("cpu", **{name: value}).freeze()


# ---- scripts run by the `icelaunch` command ---------------------------------------

HUNG_SCRIPT = """
import os, sys, time
from pathlib import Path
import torch, torch.distributed as dist
import icelaunch

def stuck_in_a_script():
    time.sleep(600)

ctx = icelaunch.init_process_group()
Path(sys.argv[1], f"{ctx.rank}.pid").write_text(str(os.getpid()))
if ctx.rank == 1:
    stuck_in_a_script()
dist.all_reduce(torch.ones(1))
"""

CRASH_SCRIPT = """
import ctypes, time
import torch.distributed as dist
import icelaunch

def crash_in_a_script():
    ctypes.string_at(0)

ctx = icelaunch.init_process_group()
dist.barrier()
if ctx.rank == 1:
    crash_in_a_script()
time.sleep(600)
"""


def _command(tmp_path: Path, source: str, *options: str) -> tuple[list[str], Path]:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(source))
    folder = tmp_path / "ranks"
    folder.mkdir()
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", *options, str(script)]
    return [*argv, str(folder)], folder


def test_script_stacks_on_demand_then_ctrl_c_shows_them(tmp_path: Path) -> None:
    argv, folder = _command(tmp_path, HUNG_SCRIPT)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(folder, 2, proc)
        time.sleep(0.5)  # into the calls
        shown = _icelaunch("stacks", str(proc.pid))
        assert "rank 1: time.sleep(600)  (job.py:8 in stuck_in_a_script)" in shown.stdout
        assert "rank 0: dist.all_reduce(torch.ones(1))  (job.py:14 in <module>)" in shown.stdout
        assert "_script.py" not in shown.stdout and "runpy" not in shown.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert_all_gone(_pids(folder))
    assert proc.returncode == 130, out
    assert "where the running ranks were:" in out
    assert "rank 1: time.sleep(600)  (job.py:8 in stuck_in_a_script)" in out


def test_script_segfault_reports_the_python_stack_at_the_crash(tmp_path: Path) -> None:
    argv, _ = _command(tmp_path, CRASH_SCRIPT)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    assert "rank 1 (local rank 1, signal SIGSEGV)" in result.stderr
    assert "Fatal Python error: Segmentation fault" in result.stderr
    script = str(tmp_path / "job.py")
    assert f'> File "{script}", line 7, in crash_in_a_script' in result.stderr
    # rank 0 was stopped while it slept: its stack is in the report
    assert "rank 0: time.sleep(600)  (job.py:13 in <module>)" in result.stderr


# ---- out of memory, in a real memory cgroup ----------------------------------------

OOM_DRIVER = """
import os, sys, time
from pathlib import Path
from icelaunch import ElasticLauncher, WorkerFailedError

def eat_memory(launcher, folder):
    Path(folder, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    if launcher.rank == 1:
        hoard = []
        while True:
            hoard.append(bytearray(b"x" * (32 << 20)))  # touched, so really resident
    time.sleep(600)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    try:
        launcher(eat_memory, launcher, sys.argv[1])
    except WorkerFailedError as err:
        print(err, flush=True)
"""

OOM_LIMIT_BYTES = 1536 << 20


def _mount(fstype: str, option: str = "") -> str | None:
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if fields[0] == fstype and (not option or option in fields[2].split(",")):
                return left.split()[4]
    return None


def _make_memory_cgroup(limit: int) -> tuple[Path, str]:
    """A child memory cgroup limited to ``limit`` bytes (v2, else v1), and the procs file."""
    name = f"icelaunch-test-{os.getpid()}"
    v2 = _mount("cgroup2")
    if v2 and "memory" in Path(v2, "cgroup.subtree_control").read_text().split():
        path = Path(v2, name)
        path.mkdir()
        Path(path, "memory.max").write_text(str(limit))
        if Path(path, "memory.swap.max").exists():
            Path(path, "memory.swap.max").write_text("0")
        return path, "cgroup.procs"
    v1 = _mount("cgroup", "memory")
    if v1 is None:
        raise OSError("no memory cgroup controller mounted")
    own = next(
        line.split(":", 2)[2].strip()
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if "memory" in line.split(":")[1].split(",")
    )
    path = Path(v1 + own, name)
    path.mkdir()
    Path(path, "memory.limit_in_bytes").write_text(str(limit))
    if Path(path, "memory.memsw.limit_in_bytes").exists():
        Path(path, "memory.memsw.limit_in_bytes").write_text(str(limit))
    return path, "cgroup.procs"


def _remove_cgroup(path: Path, procs: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = Path(path, procs).read_text().split()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"cgroup {path} could not be removed")


OOM_SCRIPT = """
import os, sys, time
from pathlib import Path
import icelaunch

def eat_memory_in_a_script():
    hoard = []
    while True:
        hoard.append(bytearray(b"x" * (32 << 20)))

ctx = icelaunch.current()
Path(sys.argv[1], f"{ctx.rank}.pid").write_text(str(os.getpid()))
if ctx.rank == 1:
    eat_memory_in_a_script()
time.sleep(600)
"""


@pytest.mark.parametrize("what", ["function", "script"])
def test_oom_kill_in_a_cgroup_is_reported_as_such(tmp_path: Path, what: str) -> None:
    try:
        cgroup, procs = _make_memory_cgroup(OOM_LIMIT_BYTES)
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    try:
        script = tmp_path / "job.py"
        script.write_text(textwrap.dedent(OOM_DRIVER if what == "function" else OOM_SCRIPT))
        folder = tmp_path / "ranks"
        folder.mkdir()
        join = str(Path(cgroup, procs))

        def enter_cgroup() -> None:
            with open(join, "w") as fh:
                fh.write(str(os.getpid()))

        launch = [
            sys.executable,
            "-m",
            "icelaunch",
            "--devices",
            "cpu:0-1",
            "--monitor-interval=0.5",
        ]
        result = subprocess.run(
            [*([sys.executable] if what == "function" else launch), str(script), str(folder)],
            capture_output=True,
            text=True,
            timeout=180,
            preexec_fn=enter_cgroup,
        )
        assert_all_gone(_pids(folder))
    finally:
        _remove_cgroup(cgroup, procs)
    report = result.stdout + result.stderr
    summary = "rank 1 (local rank 1, signal SIGKILL): killed by the kernel's out-of-memory killer"
    assert summary in report
    if what == "script":
        assert result.returncode == 128 + signal.SIGKILL
    detail = report.split(summary, 1)[1].splitlines()[0]
    assert "oom_kill 0 -> 1" in detail
    peak = int(detail.split("its peak memory as sampled by the launcher: ")[1].split()[0])
    assert 256 <= peak <= OOM_LIMIT_BYTES >> 20


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
            _wait_for(Path(folder), 2)
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
    assert_all_gone(_pids(tmp_path))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "where the running ranks were:\nrank 0: time.sleep(600)" in logged


HANG_AFTER_STEPS = """
import time
import torch, torch.distributed as dist
import icelaunch

def stuck_in_a_script():
    time.sleep(600)

ctx = icelaunch.init_process_group()
for _ in range(3):
    dist.all_reduce(torch.ones(1))
if ctx.rank == 1:
    stuck_in_a_script()
dist.all_reduce(torch.ones(1))
"""


@pytest.mark.parametrize("option", ["--timeout=30", "--hang-timeout=3"])
def test_script_time_limits_show_where_the_ranks_are(tmp_path: Path, option: str) -> None:
    argv, _ = _command(tmp_path, HANG_AFTER_STEPS, option)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 124, result.stderr
    why = "timeout=30 s" if "=30" in option else "no rank's Python stack changed"
    assert why in result.stderr
    assert "rank 1: time.sleep(600)  (job.py:7 in stuck_in_a_script)" in result.stderr
    assert "rank 0: dist.all_reduce(torch.ones(1))  (job.py:14 in <module>)" in result.stderr


def test_script_collective_timeout(tmp_path: Path) -> None:
    # (the group's set-up waits for the peers this long too: the ranks start apart)
    argv, _ = _command(tmp_path, HANG_AFTER_STEPS, "--collective-timeout=10")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr
    assert "rank 0 (local rank 0, exit code 1)" in result.stderr
    assert "Timed out waiting 10000ms" in result.stderr
    assert "rank 1: time.sleep(600)  (job.py:7 in stuck_in_a_script)" in result.stderr


def test_a_script_named_stacks_runs_as_dot_slash_stacks(tmp_path: Path) -> None:
    (tmp_path / "stacks").write_text('print("the script named stacks ran")\n')
    run = [sys.executable, "-m", "icelaunch"]
    script = subprocess.run(
        [*run, "--devices", "cpu:0", "./stacks"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert "the script named stacks ran" in script.stdout
    command = subprocess.run(
        [*run, "stacks", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "to run the script ./stacks, write `icelaunch ./stacks`" in command.stderr
    assert "the script named stacks ran" not in command.stdout
    usage = subprocess.run([*run, "stacks", "x"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "invalid int value: 'x'" in usage.stderr


def busy_training(launcher: ElasticLauncher, steps: int) -> int:
    t = torch.ones(1000)
    for _ in range(steps):
        dist.all_reduce(t)  # nearly every stack sample lands here, yet the job progresses
    return steps


def test_hang_timeout_leaves_a_busy_training_loop_alone() -> None:
    launcher = ElasticLauncher("cpu:0-3", hang_timeout=1).freeze()
    assert launcher(busy_training, launcher, 2000) == dict.fromkeys(range(4), 2000)


# ---- the same stops for scripts: 8 ranks grouped, mismatched collectives, a peer failing

EIGHT_RANKS_SCRIPT = """
import time
import torch, torch.distributed as dist
import icelaunch

def spinning_in_a_script():
    while True: pass

ctx = icelaunch.init_process_group()
dist.barrier()
if ctx.rank == 3:
    time.sleep(600)
if ctx.rank == 5:
    spinning_in_a_script()
dist.all_reduce(torch.ones(1))
"""

MISMATCHED_SCRIPT = """
import time
import torch, torch.distributed as dist
import icelaunch

ctx = icelaunch.init_process_group()
t = torch.ones(1)
if ctx.rank == 0:
    dist.all_reduce(t)
else:
    dist.broadcast(t, src=1)
time.sleep(600)
"""

PEER_FAILURE_SCRIPT = """
import time
import torch, torch.distributed as dist
import icelaunch

def stuck_in_a_script():
    time.sleep(600)

ctx = icelaunch.init_process_group()
pair = dist.new_group([0, 1])
dist.barrier()
if ctx.rank == 2:
    time.sleep(1)
    raise RuntimeError("rank 2 gives up")
if ctx.rank == 1:
    stuck_in_a_script()
dist.all_reduce(torch.ones(1), group=pair)
"""

SCRIPT_STOPS = {  # script, devices, options, exit status, what the report must show
    "eight ranks": (
        EIGHT_RANKS_SCRIPT, "cpu:0-7", ["--hang-timeout=3"], 124,
        [
            "no rank's Python stack changed",
            "\nrank 3: time.sleep(600)  (job.py:12 in <module>)",
            "\nrank 5: while True: pass  (job.py:7 in spinning_in_a_script)",
            "\nranks 0-2,4,6-7: dist.all_reduce(torch.ones(1))  (job.py:15 in <module>)",
        ],
    ),
    "mismatched": (
        MISMATCHED_SCRIPT, "cpu:0-1", ["--hang-timeout=3"], 124,
        ["no rank's Python stack changed"],
    ),
    "peer failure": (
        PEER_FAILURE_SCRIPT, "cpu:0-2", [], 1,
        [
            "rank 2 (local rank 2, exit code 1)",
            "RuntimeError: rank 2 gives up",
            "where the running ranks were when they were stopped:",
            "rank 1: time.sleep(600)  (job.py:7 in stuck_in_a_script)",
            "rank 0: dist.all_reduce(torch.ones(1), group=pair)  (job.py:17 in <module>)",
        ],
    ),
}  # fmt: skip


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", list(SCRIPT_STOPS))
def test_script_stops_show_where_the_ranks_were(tmp_path: Path, case: str) -> None:
    source, devices, options, status, expected = SCRIPT_STOPS[case]
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(source))
    argv = [sys.executable, "-m", "icelaunch", "--devices", devices, *options, str(script)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == status, err[-3000:]
    for text in expected:
        assert text in err, f"{text!r} missing from:\n{err[-3000:]}"
    if case == "mismatched":  # each rank is in its own collective, or past it asleep
        assert re.search(r"dist\.all_reduce\(t\)|time\.sleep\(600\)", err), err[-3000:]
        assert re.search(r"dist\.broadcast\(t, src=1\)|time\.sleep\(600\)", err), err[-3000:]
    assert _processes_running(str(script)) == []


def _processes_running(argument: str) -> list[psutil.Process]:
    """Processes (a launcher, its workers) whose command line names ``argument``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if argument in (p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found
