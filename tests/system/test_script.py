"""``python -m icelaunch._worker._script``: scripts run as Python runs them, after set-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import icelaunch, launch, write

RUN_TIMEOUT_S = 60
SHOW = """
import json, os, sys
print("SEEN", json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__,
      "file": __file__, "pid": os.getpid(), "ppid": os.getppid(),
      "main": getattr(sys.modules["__main__"], "__file__", None)}))
"""


def wrapped(*command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-u", "-m", "icelaunch._worker._script", *command]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def seen(stdout: str) -> dict[str, object]:
    import json

    lines = [line for line in stdout.splitlines() if "SEEN " in line]
    assert lines, stdout
    return dict(json.loads(lines[0].split("SEEN ", 1)[1]))


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_script_sees_what_python_script_py_gives_it(tmp_path: Path):
    path = write(tmp_path, "sub/show.py", SHOW)
    result = wrapped(sys.executable, "-u", str(path), "--lr", "0.1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plain = subprocess.run(
        [sys.executable, "-u", str(path), "--lr", "0.1"], cwd=tmp_path, capture_output=True,
        text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    got, want = seen(result.stdout), seen(plain.stdout)
    for key in ("argv", "path0", "name", "file", "main"):
        assert got[key] == want[key], key


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_module_sees_what_python_m_gives_it(tmp_path: Path):
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/show.py", SHOW)
    result = wrapped(sys.executable, "-u", "-m", "pkg.show", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plain = subprocess.run(
        [sys.executable, "-u", "-m", "pkg.show", "x"], cwd=tmp_path, capture_output=True,
        text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    got, want = seen(result.stdout), seen(plain.stdout)
    for key in ("argv", "path0", "name", "file", "main"):
        assert got[key] == want[key], key


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_another_program_replaces_the_wrapper_in_the_same_process(tmp_path: Path):
    result = wrapped("sh", "-c", 'echo "pid $$"', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pid ")


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_traceback_shows_only_the_users_frames(tmp_path: Path):
    path = write(tmp_path, "boom.py", "def f():\n    raise ValueError('shard 7')\nf()\n")
    result = wrapped(sys.executable, "-u", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "ValueError: shard 7" in result.stderr
    assert result.stderr.count('File "') == 2, result.stderr  # <module> and f
    assert "runpy" not in result.stderr and "_script" not in result.stderr


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_sys_exit_status_is_kept(tmp_path: Path):
    path = write(tmp_path, "exit.py", "import sys\nsys.exit(5)\n")
    assert wrapped(sys.executable, "-u", str(path), cwd=tmp_path).returncode == 5


ENDS = """
import atexit, sys, threading, time
log = open("log.txt", "w")
log.write("written")  # never closed: Python flushes it as the program ends
atexit.register(lambda: print("ATEXIT", flush=True))
threading.Thread(target=lambda: (time.sleep(0.2), print("THREAD", flush=True))).start()
sys.exit("bye")
"""


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_a_script_ends_as_under_python(tmp_path: Path):
    """Threads joined, atexit callbacks run, an open file flushed, sys.exit's message
    and status: as ``python script.py`` ends, though the interpreter is not torn down."""
    path = write(tmp_path, "ends.py", ENDS)
    plain = subprocess.run(
        [sys.executable, "-u", str(path)], cwd=tmp_path, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    plain_log = (tmp_path / "log.txt").read_text()
    (tmp_path / "log.txt").unlink()
    result = wrapped(sys.executable, "-u", str(path), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "THREAD\nATEXIT\n", "bye\n")
    assert (plain.returncode, plain.stdout, plain.stderr) == (1, "THREAD\nATEXIT\n", "bye\n")
    assert (tmp_path / "log.txt").read_text() == plain_log == "written"


BUSY_AT_THE_END = """
import sys
import threading

import torch
import torch.distributed as dist

import icelaunch

rank = icelaunch.init_process_group().rank
group = dist.group.WORLD  # kept past destroy_process_group, as DistributedDataParallel keeps it
teardown = threading.Lock()
teardown.acquire()


class Marker:
    def __del__(self):  # the interpreter's teardown empties sys.modules
        teardown.release()


def late(_):  # in gloo's worker thread, which then asks for the GIL in the teardown
    teardown.acquire(timeout=60)


sys.modules["_teardown_marker"] = Marker()
if rank == 0:
    dist.all_reduce(torch.ones(1), async_op=True).get_future().then(late)
    dist.send(torch.ones(1), dst=1)  # rank 1 joins the all_reduce only now
else:
    dist.recv(torch.ones(1), src=0)
    dist.all_reduce(torch.ones(1))
dist.destroy_process_group()
print("END", flush=True)
"""


@pytest.mark.timeout(RUN_TIMEOUT_S * 3)
def test_a_torch_thread_busy_at_the_end_does_not_abort_the_rank(tmp_path: Path):
    """In Python's teardown a thread that asks for the GIL is ended, and one of torch's
    aborts the process ("terminate called without an active exception"): a gloo
    thread releasing a finished all_reduce's tensor did so to about 1 DDP launch in
    6, after training (under torchrun too). Here gloo's thread runs a callback."""
    path = write(tmp_path, "busy_at_the_end.py", BUSY_AT_THE_END)
    result = launch(icelaunch("--devices", "cpu:0-1", str(path)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("END") == 2 and "terminate called" not in result.stderr


@pytest.mark.timeout(RUN_TIMEOUT_S)
def test_the_command_runs_scripts_with_no_extra_process(tmp_path: Path):
    path = write(tmp_path, "show.py", SHOW)
    result = launch(icelaunch("--devices", "cpu:0-1", str(path), "a"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "SEEN " in line]
    assert len(lines) == 2, result.stdout
    for line in lines:
        got = seen(line)
        assert got["argv"] == [str(path), "a"] and got["name"] == "__main__"
        assert got["file"] == str(path) and got["path0"] == str(tmp_path)


MARKED = """
import os
with open("/proc/self/environ", "rb") as fh:
    initial = fh.read().split(b"\\0")
mark = os.environ["ICELAUNCH_JOB_MARK"].encode()
print("MARK_AT_EXEC", b"ICELAUNCH_JOB_MARK=" + mark in initial)
print("SPEC_SET", "ICELAUNCH_SPEC" in os.environ, "OMP", os.environ["OMP_NUM_THREADS"])
"""


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_a_script_worker_has_the_job_mark_from_exec_and_its_variables(tmp_path: Path):
    """The stop path finds a worker's forked descendants by the mark in
    /proc/<pid>/environ, which shows the environment at exec: the mark must be
    there, not only set later by the runner (which sets the other variables)."""
    script = write(tmp_path, "marked.py", MARKED)
    result = launch(icelaunch("--devices", "cpu:0-1", str(script)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("MARK_AT_EXEC True") == 2, result.stdout
    assert result.stdout.count("SPEC_SET True OMP 1") == 2, result.stdout


LEAVES_GROUP = """
import atexit
import torch
import torch.distributed as dist

dist.init_process_group("gloo")  # env://, as torchrun scripts and frameworks do
t = torch.ones(1)
dist.all_reduce(t)
atexit.register(lambda: print("LEFT", dist.is_initialized(), flush=True))
print("SUM", t.item(), flush=True)
"""


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_a_group_the_script_left_is_destroyed_before_the_interpreter_ends(tmp_path: Path):
    """Left to the interpreter's teardown, gloo can abort a rank whose peer exited
    first (seen under load with Lightning Fabric: about 1 run in 5)."""
    script = write(tmp_path, "leaves_group.py", LEAVES_GROUP)
    result = launch(icelaunch("--devices", "cpu:0-1", str(script)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("SUM 2.0") == 2, result.stdout
    assert result.stdout.count("LEFT False") == 2, result.stdout
