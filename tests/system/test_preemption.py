"""A scheduler stops the job: real signals to a real launcher, of scripts and functions.

The grace (``shutdown_timeout``), signals passed on, the exit status, and no
rank outliving a launcher killed with -9.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_gone, icelaunch, is_running, pid_files, wait_for_pid_files, write

pytestmark = [pytest.mark.timeout(120)]

# A rank that saves a checkpoint (taking SAVE_S) when SIGTERM or SIGUSR1 arrives.
SAVER = """
import os, signal, sys, time
out, save_s = sys.argv[1], float(sys.argv[2])
rank = os.environ["RANK"]

def save(signum, frame):
    time.sleep(save_s)
    with open(f"{out}/ckpt-{rank}", "w") as fh:
        fh.write(signal.Signals(signum).name)
    sys.exit(0)

signal.signal(signal.SIGTERM, save)
signal.signal(signal.SIGUSR1, save)
with open(f"{out}/{rank}.pid", "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# Rank 1 ignores SIGTERM: only SIGKILL ends it.
STUBBORN = """
import os, signal, sys, time
rank = os.environ["RANK"]
if rank == "1":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(f"{sys.argv[1]}/{rank}.pid", "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


def _start(tmp_path: Path, code: str, *args: str, options: tuple[str, ...] = ()) -> Popen:
    script = write(tmp_path, "job.py", code)
    out = tmp_path / "out"
    out.mkdir()
    argv = icelaunch("--devices", "cpu:0-1", *options, str(script), str(out), *args)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_pid_files(out, 2, proc)
    time.sleep(0.3)  # the handlers are installed right after the pid file is written
    return proc


Popen = subprocess.Popen[str]


def test_sigterm_lets_every_rank_finish_its_checkpoint(tmp_path: Path) -> None:
    """The issue's case: a 2 s save on SIGTERM survives (it was SIGKILLed after 3 s
    before, and a 5 s one would be under torchrun's 30 s too); the command exits 143."""
    proc = _start(tmp_path, SAVER, "2")
    pids = pid_files(tmp_path / "out")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert sorted(p.name for p in (tmp_path / "out").glob("ckpt-*")) == ["ckpt-0", "ckpt-1"]
    assert "ranks 0, 1 exited on their own (status 0)" in out
    assert "death signal" not in out  # torch's "shutting down workers": not what happens
    assert "where the running ranks were" not in out  # a clean stop: no stacks shown
    assert took < 25  # ended when the ranks did, not when the 30 s grace ran out
    print(f"\nSIGTERM with a 2 s save: the command ended after {took:.2f} s")
    assert_gone(pids, 5)


def test_sigusr1_is_passed_on_and_the_launch_goes_on(tmp_path: Path) -> None:
    """SLURM's preemption notice: the ranks get it, save and exit 0; so does the command.
    The launcher used to die at once and leave both ranks running, orphaned."""
    proc = _start(tmp_path, SAVER, "0.5")
    pids = pid_files(tmp_path / "out")
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert [p.read_text() for p in sorted((tmp_path / "out").glob("ckpt-*"))] == ["SIGUSR1"] * 2
    assert "SIGUSR1 passed on to ranks 0, 1; the launch goes on" in out
    assert_gone(pids, 5)


def test_a_rank_without_a_handler_is_not_ended_by_sigusr1(tmp_path: Path) -> None:
    """Every rank notes SIGUSR1 (for stop_requested()); none dies of it."""
    code = STUBBORN.replace(
        "while True:", "deadline = time.time() + 3\nwhile time.time() < deadline:"
    )
    proc = _start(tmp_path, code)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_a_rank_ignoring_sigterm_is_killed_when_shutdown_timeout_runs_out(tmp_path: Path) -> None:
    proc = _start(tmp_path, STUBBORN, options=("--shutdown-timeout", "2"))
    pids = pid_files(tmp_path / "out")
    stubborn = int((tmp_path / "out" / "1.pid").read_text())
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while is_running(stubborn) and time.monotonic() - started < 30:
        time.sleep(0.01)
    lived = time.monotonic() - started
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "rank 1 still running at the end of the grace, killed (SIGKILL)" in out
    assert "rank 0 ended by SIGTERM" in out
    print(f"\nshutdown_timeout=2: the rank ignoring SIGTERM was gone after {lived:.2f} s")
    assert 2.0 <= lived < 2.0 + 10  # measured in the note: the grace plus well under 1 s
    assert_gone(pids, 5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_same_signal_again_ends_the_grace_at_once(tmp_path: Path, sig: int) -> None:
    proc = _start(tmp_path, STUBBORN)  # the default grace: 30 s
    pids = pid_files(tmp_path / "out")
    started = time.monotonic()
    proc.send_signal(sig)
    time.sleep(1)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 128 + sig, out
    assert took < 20, out  # not the 30 s grace
    assert f"{signal.Signals(sig).name} again ended the grace" in out
    assert_gone(pids, 5)


def test_another_stop_signal_ends_the_grace_and_is_named(tmp_path: Path) -> None:
    proc = _start(tmp_path, STUBBORN)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "SIGHUP again ended the grace" in out


def test_signals_to_handle_refuses_what_cannot_be_caught(tmp_path: Path) -> None:
    script = write(tmp_path, "job.py", "print('ok')\n")
    argv = icelaunch("--signals-to-handle", "SIGUSR2,SIGKILL", str(script))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "SIGKILL cannot be caught" in done.stderr


@pytest.mark.parametrize("name", ["SIGALRM", "SIGXCPU", "SIGPROF", "SIGHUP"])
def test_a_signal_that_would_end_the_launcher_stops_the_launch_instead(
    tmp_path: Path, name: str
) -> None:
    """Its default action would end the launcher and orphan the ranks: it is a stop."""
    sig = getattr(signal, name)
    proc = _start(tmp_path, SAVER, "0.2")
    pids = pid_files(tmp_path / "out")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out
    assert f"stopped by {name}" in out
    assert sorted(p.name for p in (tmp_path / "out").glob("ckpt-*")) == ["ckpt-0", "ckpt-1"]
    assert_gone(pids, 5)


def test_kill_9_of_the_command_leaves_no_script_rank(tmp_path: Path) -> None:
    """Script ranks used to survive a launcher that died; now each is tied to it."""
    proc = _start(tmp_path, STUBBORN)
    pids = pid_files(tmp_path / "out")
    started = time.monotonic()
    proc.kill()
    proc.communicate(timeout=30)
    deadline = started + 10
    while any(is_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    took = time.monotonic() - started
    print(f"\nkill -9 of the command: every script rank gone after {took:.2f} s")
    assert_gone(pids, 0.1)
    assert took < 1.0 + 2.0  # "within a second", with room for a loaded machine


def test_kill_9_of_the_command_leaves_no_exec_rank(tmp_path: Path) -> None:
    """--no-python programs keep the tie across exec."""
    script = write(tmp_path, "run.sh", '#!/bin/sh\necho $$ > "$1/$RANK.pid"\nexec sleep 60\n')
    script.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    argv = icelaunch("--devices", "cpu:0-1", "--no-python", str(script), str(out))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_pid_files(out, 2, proc)
    pids = pid_files(out)
    proc.kill()
    proc.communicate(timeout=30)
    assert_gone(pids, 3)


LAUNCH_IN_A_THREAD = """
import os, sys, threading, time
from pathlib import Path
from icelaunch import ElasticLauncher

def worker(launcher, out):
    Path(out, f"{launcher.rank}.pid").write_text(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    threading.Thread(target=launcher, args=(worker, launcher, sys.argv[1])).start()
    threading.Event().wait()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_caller_killed_during_a_launch_from_a_thread_leaves_no_rank(
    tmp_path: Path, sig: int
) -> None:
    """No handler can be installed from a thread: the caller dies of SIGTERM as it
    chose (its default), and its ranks die with it."""
    script = write(tmp_path, "caller.py", LAUNCH_IN_A_THREAD)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_pid_files(out, 2, proc)
    pids = pid_files(out)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == -sig
    assert_gone(pids, 3)


def test_shutdown_timeout_from_the_environment_as_torchrun_reads_it(tmp_path: Path) -> None:
    script = write(tmp_path, "job.py", "print('ok')\n")
    argv = icelaunch("--dry-run", str(script))
    env = {**os.environ, "PET_SHUTDOWN_TIMEOUT": "120"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    assert '"shutdown_timeout": 120.0' in done.stdout


SPAM = """
import os, sys, time
with open(f"{sys.argv[1]}/{os.environ['RANK']}.pid", "w") as fh:
    fh.write(str(os.getpid()))
i = 0
while True:
    print("line", i, flush=True)
    with open(f"{sys.argv[1]}/count-{os.environ['RANK']}", "w") as fh:
        fh.write(str(i))
    i += 1
    time.sleep(0.01)
"""

PROGRAM_SPAM = """
import os, sys, time
from icelaunch import ElasticLauncher

def spam(launcher, out):
    with open(f"{out}/{launcher.rank}.pid", "w") as fh:
        fh.write(str(os.getpid()))
    i = 0
    while True:
        print("line", i, flush=True)
        with open(f"{out}/count-{launcher.rank}", "w") as fh:
            fh.write(str(i))
        i += 1
        time.sleep(0.01)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", log_dir=sys.argv[2], tee="3").freeze()
    launcher(spam, launcher, sys.argv[1])
"""


@pytest.mark.parametrize("what", ["command", "function"])
def test_a_closed_output_pipe_ends_the_launch(tmp_path: Path, what: str) -> None:
    """`... | head -1`: head exits, the launch ends with 128 + SIGPIPE (the job used to
    run on into the void), nothing is left running, the log files hold what was written."""
    out = tmp_path / "out"
    out.mkdir()
    logs = tmp_path / "logs"
    if what == "command":
        script = write(tmp_path, "spam.py", SPAM)
        options = ("--log-dir", str(logs), "--tee", "3")
        argv = icelaunch("--devices", "cpu:0-1", *options, str(script), str(out))
    else:
        program = write(tmp_path, "program.py", PROGRAM_SPAM)
        argv = [sys.executable, str(program), str(out), str(logs)]
    command = " ".join(f"'{a}'" for a in argv) + ' | head -1; echo "status=${PIPESTATUS[0]}"'
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=90, check=False
    )
    assert "[rank" in done.stdout.splitlines()[0], done
    assert f"status={128 + signal.SIGPIPE}" in done.stdout, done
    assert "stopped by SIGPIPE" in done.stderr, done.stderr
    assert_gone(pid_files(out), 5)
    for rank in (0, 1):  # a rank stopped before it wrote anything has no log file
        count = out / f"count-{rank}"
        text = count.read_text() if count.exists() else ""  # empty: stopped mid-write
        written = int(text) if text else -1  # lines it finished
        logged = list(logs.glob(f"*/attempt_0/{rank}/stdout.log"))
        lines = logged[0].read_text().splitlines() if logged else []
        whole = [f"line {i}" for i in range(len(lines))]
        assert lines[:-1] == whole[:-1]  # in order, none lost
        assert not lines or whole[-1].startswith(lines[-1])  # (stopped mid-print)
        assert len(lines) > written


TWO_THREADS = """
import json, os, signal, threading
from icelaunch import ElasticLauncher

def rank(launcher):
    return launcher.rank

if __name__ == "__main__":
    before = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    results = []
    threads = [threading.Thread(target=lambda: results.append(launcher(rank, launcher)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = dict(os.environ)
    print(json.dumps({
        "results": results,
        "added": sorted(set(after) - set(before)),
        "changed": sorted(k for k in before if after.get(k) != before[k]),
        "handlers": all(signal.getsignal(s) == h for s, h in handlers.items()),
    }))
"""


def test_two_launches_from_threads_leave_the_environment_as_it_was(tmp_path: Path) -> None:
    """From a cold start (the case that left TORCHELASTIC_SIGNALS_TO_HANDLE behind)."""
    import json

    program = write(tmp_path, "program.py", TWO_THREADS)
    done = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["results"] == [{"0": 0, "1": 1}] * 2
    assert found == {**found, "added": [], "changed": [], "handlers": True}
    assert "Failed to register signal handlers" not in done.stderr
