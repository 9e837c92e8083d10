"""Every stop explains itself, seen from outside: driver processes and scripts under
the ``icelaunch`` command, ``icelaunch stacks``, Ctrl-C, native crashes and the
out-of-memory killer.

Each job's ranks write their pid to a folder before they block, so every test
can prove that no rank outlived the launch."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from helpers import assert_gone, pid_files, wait_for_pid_files

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


assert_all_gone = assert_gone


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


def _driver(
    tmp_path: Path, fn: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    folder = tmp_path / "ranks"
    folder.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), fn, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    wait_for_pid_files(folder, 3, proc)
    return proc, folder


def test_ctrl_c_prints_the_grouped_stacks_before_keyboard_interrupt(tmp_path: Path) -> None:
    proc, folder = _driver(tmp_path, "waits_for_rank_one")
    time.sleep(0.5)  # into the calls
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert_all_gone(pid_files(folder))
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
    assert_all_gone(pid_files(tmp_path))
    assert f'File "{script}", line 26, in raises_in_main' in out
    assert "<dynamic-code>" not in out
    # icelaunch's bootstrap frames are left out (a retried gloo set-up failure may
    # have printed some: look only at the tracebacks of the function)
    for block in out.split("Traceback (most recent call last):")[1:]:
        if "in raises_in_main" in block:
            assert "icelaunch/_worker/" not in block, block


def _icelaunch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icelaunch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_icelaunch_stacks_from_another_process_leaves_the_job_running(tmp_path: Path) -> None:
    # a temp directory of its own: `icelaunch stacks` without a pid asks every launch
    # it finds there, and must not signal those of suites running beside this one
    own_tmp = tmp_path / "tmp"
    own_tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(own_tmp)}
    proc, folder = _driver(tmp_path, "trains_until_told", env)
    try:
        for _ in range(5):
            shown = _icelaunch("stacks", str(proc.pid), env=env)
            assert shown.returncode == 0, shown.stderr
            assert f"launch {proc.pid}" in shown.stdout
            assert "in trains_until_told" in shown.stdout
        everything = _icelaunch("stacks", env=env)
        assert f"launch {proc.pid}" in everything.stdout
    finally:
        (folder / "finish").write_text("")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "result [0, 1, 2]" in out
    assert_all_gone(pid_files(folder))


def test_icelaunch_stacks_of_no_launch_says_so() -> None:
    shown = _icelaunch("stacks", "1")
    assert shown.returncode == 1
    assert "no icelaunch launch with pid 1" in shown.stderr


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
        wait_for_pid_files(folder, 2, proc)
        time.sleep(0.5)  # into the calls
        shown = _icelaunch("stacks", str(proc.pid))
        assert "rank 1: time.sleep(600)  (job.py:8 in stuck_in_a_script)" in shown.stdout
        assert "rank 0: dist.all_reduce(torch.ones(1))  (job.py:14 in <module>)" in shown.stdout
        assert "_script.py" not in shown.stdout and "runpy" not in shown.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert_all_gone(pid_files(folder))
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


# ---- ranks that run another program: `--no-python`, a script that exec's ----------

WRAPPER = """#!/bin/sh
echo $$ > "{folder}/$RANK.pid"
echo "rank $RANK runs"
{body}
"""

WRAPPED = {  # what the wrapper runs, its --hang-timeout, the exit status it must end with
    "sleeps 6 s": ("sleep 6", 30, 0),
    # a child that computes for 10 s: the rank's own process only waits for it
    "runs a child that computes": (
        f"{sys.executable} -c 'import time; t = time.monotonic() + 10\n"
        "while time.monotonic() < t: pass'",
        3,
        0,
    ),
    "sleeps for good": ("sleep 600", 3, 124),
}


def _wrapper(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "ranks"
    folder.mkdir()
    script = tmp_path / "run.sh"
    script.write_text(WRAPPER.format(folder=folder, body=body))
    script.chmod(0o755)
    return folder


@pytest.mark.parametrize("case", list(WRAPPED))
def test_a_no_python_rank_is_judged_by_what_it_does_and_never_signalled(
    tmp_path: Path, case: str
) -> None:
    body, hang_timeout, status = WRAPPED[case]
    folder = _wrapper(tmp_path, body)
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", "--no-python"]
    argv.append(f"--hang-timeout={hang_timeout}")
    proc = subprocess.Popen(
        [*argv, "./run.sh"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for_pid_files(folder, 2, proc)
        shown = _icelaunch("stacks", str(proc.pid))  # the stack signal, asked from outside
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert_all_gone(pid_files(folder))
    assert proc.returncode == status, err[-3000:]
    note = "ranks 0-1: (no Python stack: it runs `/bin/sh ./run.sh` without icelaunch's stack"
    assert note in shown.stdout, shown.stdout + shown.stderr
    assert "rank 0 runs" in out and "rank 1 runs" in out
    if status:
        assert "no rank computed, woke up from a wait or changed its Python stack" in err
        assert note in err


EXECS_ITSELF = """
import os, sys, time
from pathlib import Path
if sys.argv[-1] != "again":
    os.execv(sys.executable, [sys.executable, *sys.argv, "again"])
Path(sys.argv[1], os.environ["RANK"] + ".pid").write_text(str(os.getpid()))
time.sleep(6)
print("rank", os.environ["RANK"], "done after exec")
"""


def test_a_script_that_execs_itself_is_never_signalled(tmp_path: Path) -> None:
    argv, folder = _command(tmp_path, EXECS_ITSELF, "--hang-timeout=30")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_pid_files(folder, 2, proc)
        shown = _icelaunch("stacks", str(proc.pid))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert_all_gone(pid_files(folder))
    assert proc.returncode == 0, err[-3000:]
    assert "rank 0 done after exec" in out and "rank 1 done after exec" in out
    assert "ranks 0-1: (no Python stack: it runs `" in shown.stdout, shown.stdout


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
        assert_all_gone(pid_files(folder))
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


@pytest.mark.parametrize("option", ["--timeout=20", "--hang-timeout=3"])
def test_script_time_limits_show_where_the_ranks_are(tmp_path: Path, option: str) -> None:
    argv, _ = _command(tmp_path, HANG_AFTER_STEPS, option)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 124, result.stderr
    why = "timeout=20 s" if "=20" in option else "no rank computed, woke up from a wait or"
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


# ---- the same stops for scripts: 8 ranks grouped, mismatched collectives, a peer failing

EIGHT_RANKS_SCRIPT = """
import threading, time
import torch, torch.distributed as dist
import icelaunch

def blocked_on_a_lock():
    lock = threading.Lock(); lock.acquire(); lock.acquire()

ctx = icelaunch.init_process_group()
dist.barrier()
if ctx.rank == 3:
    time.sleep(600)
if ctx.rank == 5:
    blocked_on_a_lock()
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
            "no rank computed, woke up from a wait or changed its Python stack",
            "\nrank 3: time.sleep(600)  (job.py:12 in <module>)",
            "\nrank 5: lock = threading.Lock(); lock.acquire(); lock.acquire()  (job.py:7 in",
            "\nranks 0-2,4,6-7: dist.all_reduce(torch.ones(1))  (job.py:15 in <module>)",
        ],
    ),
    "mismatched": (
        MISMATCHED_SCRIPT, "cpu:0-1", ["--hang-timeout=3"], 124,
        ["no rank computed, woke up from a wait or changed its Python stack"],
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
