"""Worker output as a terminal shows it: live, rank-prefixed, progress bars intact.

Launches run under a real pseudo-terminal (Python's ``pty`` module) or into
pipes, with real tqdm, and the tests assert on the exact bytes the launcher's
console received.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from helpers import OnOutput, icelaunch, run_in_pty

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120
COLUMNS, ROWS = 100, 30
PREFIX = "[rank0]: "
# shutil.get_terminal_size() prefers these to the terminal; a shell rarely exports them
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
ENV["OMP_NUM_THREADS"] = "1"  # no torchrun-style warning about it among the ranks' lines


# --- real launches ----------------------------------------------------------------------

FUNCTION_JOB = """
import shutil, sys, time
from tqdm import tqdm
from icelaunch import ElasticLauncher

def worker(launcher):
    size = shutil.get_terminal_size()
    print("SEEN", launcher.rank, sys.stdout.isatty(), sys.stderr.isatty(), size.columns,
          flush=True)
    for _ in tqdm(range(5), desc="tq", disable=launcher.rank != 0, mininterval=0, ascii=True):
        time.sleep(0.01)
    if launcher.rank == 0:
        for i in range(4):
            sys.stderr.write(f"\\rbar {i}/3")
            sys.stderr.flush()
            time.sleep(0.01)
        sys.stderr.write("\\n")
    return launcher.rank

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5, max_restarts=1, **OPTIONS).freeze()
    print("RESULT", launcher(worker, launcher), flush=True)
"""

SCRIPT_JOB = """
import shutil, sys, time
from tqdm import tqdm
import icelaunch

rank = icelaunch.current().rank
print("SEEN", rank, sys.stdout.isatty(), sys.stderr.isatty(),
      shutil.get_terminal_size().columns, flush=True)
for _ in tqdm(range(5), desc="tq", disable=rank != 0, mininterval=0, ascii=True):
    time.sleep(0.01)
"""


# Launched functions restart once: gloo's connection set-up fails now and then under
# load (pytorch#53270), before any user code runs.


def _job(tmp_path: Path, code: str, **options: object) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(code).replace("**OPTIONS", f"**{options!r}"))
    return path


def _in_pty(argv: list[str], cwd: Path, on_output: OnOutput | None = None) -> tuple[int, bytes]:
    """Run ``argv`` on a raw terminal of ``COLUMNS`` x ``ROWS``; its code and all it wrote."""
    code, out, _ = run_in_pty(argv, cwd, ENV, RUN_TIMEOUT_S, on_output, (ROWS, COLUMNS))
    return code, out


def run_in_pipes(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, cwd=cwd, env=ENV, capture_output=True, timeout=RUN_TIMEOUT_S, check=False
    )


def _assert_redraws_in_place(out: bytes, marker: bytes, draws: int | None = None) -> None:
    """Each redraw of the bar starts with ``\\r`` and the prefix; all on one line."""
    found = out.count(marker)
    assert found >= 2 and found == out.count(b"\r" + PREFIX.encode() + marker), out
    if draws is not None:
        assert found == draws, out
    lines = [line for line in out.split(b"\n") if marker in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith(b"\r" + PREFIX.encode())


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_a_terminal_shows_progress_bars_in_place(tmp_path: Path) -> None:
    code, out = _in_pty([sys.executable, str(_job(tmp_path, FUNCTION_JOB))], tmp_path)
    assert code == 0, out
    width = COLUMNS - len(PREFIX)  # a full-width line still fits after the prefix
    assert f"[rank0]: SEEN 0 True True {width}\n".encode() in out, out
    assert f"[rank1]: SEEN 1 True True {width}\n".encode() in out, out
    _assert_redraws_in_place(out, b"tq:")
    _assert_redraws_in_place(out, b"bar ", draws=4)
    assert out.split(b"bar 3/3")[1].startswith(b"\n")
    assert b"[rank0]: [rank" not in out and out.count(b"SEEN 0") == 1
    assert b"RESULT {0: 0, 1: 1}\n" in out


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_pipes_give_workers_pipes_and_whole_prefixed_lines(tmp_path: Path) -> None:
    result = run_in_pipes([sys.executable, str(_job(tmp_path, FUNCTION_JOB))], tmp_path)
    assert result.returncode == 0, result.stderr
    assert b"[rank0]: SEEN 0 False False " in result.stdout
    assert b"[rank1]: SEEN 1 False False " in result.stdout
    for line in (result.stdout + result.stderr).split(b"\n"):
        for part in filter(None, line.split(b"\r")):
            assert part.startswith((b"[rank0]: ", b"[rank1]: ", b"RESULT ")), line
    _assert_redraws_in_place(result.stderr, b"bar ", draws=4)


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_scripts_under_the_command_see_a_terminal_too(tmp_path: Path) -> None:
    job = _job(tmp_path, SCRIPT_JOB)
    code, out = _in_pty(icelaunch("--devices", "cpu:0-1", str(job)), ROOT)
    assert code == 0, out
    width = COLUMNS - len(PREFIX)
    assert f"[rank0]: SEEN 0 True True {width}\n".encode() in out, out
    assert f"[rank1]: SEEN 1 True True {width}\n".encode() in out, out
    _assert_redraws_in_place(out, b"tq:")


RESIZE_JOB = """
import shutil, signal, sys, time
from icelaunch import ElasticLauncher

def worker(launcher):
    got = []
    signal.signal(signal.SIGWINCH, lambda *_: got.append(1))
    before = shutil.get_terminal_size().columns
    print("READY", launcher.rank, before, flush=True)
    deadline = time.monotonic() + 60
    while shutil.get_terminal_size().columns == before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    print("RESIZED", launcher.rank, shutil.get_terminal_size().columns, bool(got), flush=True)
    return launcher.rank

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5, max_restarts=1).freeze()
    print("RESULT", launcher(worker, launcher), flush=True)
"""


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_a_resized_terminal_reaches_the_workers(tmp_path: Path) -> None:
    wide = COLUMNS + 40
    resized: list[bool] = []

    def resize_when_ready(out: bytes, terminal: int, proc: subprocess.Popen[bytes]) -> None:
        if resized or out.count(b"READY ") < 2:
            return
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, wide, 0, 0))
        os.kill(proc.pid, signal.SIGWINCH)  # what the terminal does for its foreground
        resized.append(True)

    job = _job(tmp_path, RESIZE_JOB)
    code, out = _in_pty([sys.executable, str(job)], tmp_path, resize_when_ready)
    assert code == 0, out
    width = COLUMNS - len(PREFIX)
    assert f"[rank0]: READY 0 {width}\n".encode() in out, out
    assert f"[rank0]: RESIZED 0 {wide - len(PREFIX)} True\n".encode() in out, out
    assert f"[rank1]: RESIZED 1 {wide - len(PREFIX)} True\n".encode() in out, out


EARLY_JOB = """
import multiprocessing, os, sys
print("TOPLEVEL", flush=True)  # run again by every worker: spawn imports this file again
print("TOPERR", file=sys.stderr, flush=True)
from icelaunch import ElasticLauncher

def worker(launcher):
    return launcher.rank

def user_child():
    print("USERCHILD", os.readlink("/proc/self/fd/1").startswith("pipe:"), flush=True)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", max_restarts=1, log_dir=sys.argv[1]).freeze()
    print("RESULT", launcher(worker, launcher), flush=True)
    child = multiprocessing.get_context("forkserver").Process(target=user_child)
    child.start()  # the user's own process from the same fork server: not held
    child.join()
"""


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_output_before_a_worker_attaches_is_prefixed_and_logged(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    job = _job(tmp_path, EARLY_JOB)
    result = run_in_pipes([sys.executable, str(job), str(logs)], tmp_path)
    assert result.returncode == 0, result.stderr
    out, err = result.stdout.decode(), result.stderr.decode()
    assert out.startswith("TOPLEVEL\n"), out  # the launcher's own, once
    for rank in (0, 1):
        assert out.count(f"[rank{rank}]: TOPLEVEL\n") == 1, out
        assert err.count(f"[rank{rank}]: TOPERR\n") == 1, err
    assert out.count("TOPLEVEL") == 4 and "RESULT {0: 0, 1: 1}" in out  # + the user child
    assert "USERCHILD True" in out, out
    stdout_logs = sorted(logs.rglob("stdout.log"))
    assert len(stdout_logs) == 2
    assert all(p.read_text().startswith("TOPLEVEL\n") for p in stdout_logs)


def _terminal_view(out: bytes) -> list[bytes]:
    """The lines a terminal leaves on screen: after each ``\\r``, the line is rewritten."""
    return [line.rsplit(b"\r", 1)[-1] for line in out.split(b"\n")]


FLOOD_JOB = """
import sys
from icelaunch import ElasticLauncher

LINES = 50_000
BIG = 1 << 20

def worker(launcher):
    rank = launcher.rank
    out = sys.stdout
    for i in range(LINES):
        out.write(f"{rank} {i} {'abcdefghij' * 6}\\n")
        if rank == 0 and i == LINES // 2:
            out.write("X" * BIG + "\\n")
    out.flush()
    sys.stderr.write(f"err {rank} done\\n")
    return rank

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-3", monitor_interval=0.5, max_restarts=1, **OPTIONS).freeze()
    assert launcher(worker, launcher) == {0: 0, 1: 1, 2: 2, 3: 3}
"""
FLOOD_LINES, FLOOD_BIG = 50_000, 1 << 20


def _join_pieces(lines: list[bytes], fill: bytes) -> list[bytes]:
    """``lines`` with each run of lines made only of ``fill`` joined into one line."""
    joined: list[bytes] = []
    for line in lines:
        whole = line[:-1] == fill * (len(line) - 1) and len(line) > 1
        if whole and joined and joined[-1][:-1] == fill * (len(joined[-1]) - 1):
            joined[-1] = joined[-1][:-1] + line
        else:
            joined.append(line)
    return joined


def _expected_stdout(rank: int) -> bytes:
    lines = [f"{rank} {i} {'abcdefghij' * 6}\n".encode() for i in range(FLOOD_LINES)]
    if rank == 0:
        lines.insert(FLOOD_LINES // 2 + 1, b"X" * FLOOD_BIG + b"\n")
    return b"".join(lines)


@pytest.mark.timeout(RUN_TIMEOUT_S * 3)
def test_a_flood_of_lines_from_four_ranks_arrives_whole(tmp_path: Path) -> None:
    """Every line whole, in order, with its prefix; the one line longer than a chunk
    (1 MiB) may come in pieces while other ranks wait, each piece its own line with
    the prefix. The log files hold the exact bytes."""
    logs = tmp_path / "logs"
    job = _job(tmp_path, FLOOD_JOB, log_dir=str(logs), rdzv_id="flood")
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.run(
            [sys.executable, str(job)], cwd=tmp_path, env=ENV, stdout=out, stderr=err,
            timeout=RUN_TIMEOUT_S * 2, check=False,
        ).returncode  # fmt: skip
    assert code == 0, err_path.read_text()[-3000:]
    by_rank: dict[int, list[bytes]] = {r: [] for r in range(4)}
    for line in out_path.read_bytes().split(b"\n")[:-1]:
        match = re.fullmatch(rb"\[rank(\d)\]: (.*)", line, re.S)
        assert match, line[:200]
        by_rank[int(match[1])].append(match[2] + b"\n")
    by_rank[0] = _join_pieces(by_rank[0], b"X")
    for rank in range(4):
        assert b"".join(by_rank[rank]) == _expected_stdout(rank), rank
        rank_dir = _last_attempt(logs, rank)
        assert (rank_dir / "stdout.log").read_bytes() == _expected_stdout(rank)
        assert (rank_dir / "stderr.log").read_bytes() == f"err {rank} done\n".encode()
        assert f"[rank{rank}]: err {rank} done\n".encode() in err_path.read_bytes()


FILTER_JOB = """
import sys
from icelaunch import ElasticLauncher

def worker(launcher):
    print("hello", launcher.rank)
    print("warn", launcher.rank, file=sys.stderr)

if __name__ == "__main__":
    launcher = ElasticLauncher(
        "cpu:0-2", role="trainer", monitor_interval=0.5, max_restarts=1, **OPTIONS
    )
    launcher.freeze()(worker, launcher)
"""
FILTER_SCRIPT = """
import sys
import icelaunch

rank = icelaunch.current().rank
print("hello", rank)
print("warn", rank, file=sys.stderr)
"""
TEMPLATE = "<${role_name}:${local_rank}/${rank}@${group_rank}> "


def _last_attempt(logs: Path, local_rank: int) -> Path:
    """The log folder of ``local_rank`` in the last attempt under ``logs``."""
    found = sorted(logs.glob(f"*/attempt_*/{local_rank}"), key=lambda p: int(p.parent.name[8:]))
    assert found, list(logs.rglob("*"))
    return found[-1]


def _check_filtered(stdout: bytes, stderr: bytes, logs: Path) -> None:
    assert stdout.count(b"hello") == 2 and stderr.count(b"warn") == 2, (stdout, stderr)
    for rank in (0, 2):
        assert f"<trainer:{rank}/{rank}@0> hello {rank}\n".encode() in stdout
        assert f"<trainer:{rank}/{rank}@0> warn {rank}\n".encode() in stderr
    rank_one = _last_attempt(logs, 1)
    assert (rank_one / "stdout.log").read_bytes() == b"hello 1\n"  # unprefixed, in its file
    assert (rank_one / "stderr.log").read_bytes() == b"warn 1\n"


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_ranks_filter_and_prefix_template_from_python(tmp_path: Path) -> None:
    options = {"local_ranks_filter": "0,2", "log_line_prefix_template": TEMPLATE}
    job = _job(tmp_path, FILTER_JOB, log_dir=str(tmp_path / "logs"), **options)
    result = run_in_pipes([sys.executable, str(job)], tmp_path)
    assert result.returncode == 0, result.stderr
    _check_filtered(result.stdout, result.stderr, tmp_path / "logs")


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_ranks_filter_and_prefix_template_from_the_command(tmp_path: Path) -> None:
    job = _job(tmp_path, FILTER_SCRIPT)
    argv = icelaunch(
        "--devices", "cpu:0-2", "--role", "trainer", "--log-dir", str(tmp_path / "logs"),
        "--local-ranks-filter", "0,2", "--log-line-prefix-template", TEMPLATE, str(job),
    )  # fmt: skip
    result = run_in_pipes(argv, ROOT)
    assert result.returncode == 0, result.stderr
    _check_filtered(result.stdout, result.stderr, tmp_path / "logs")


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_no_prefix_leaves_output_unchanged(tmp_path: Path) -> None:
    job = _job(tmp_path, FILTER_JOB, local_ranks_filter=[1], log_line_prefix_template="")
    result = run_in_pipes([sys.executable, str(job)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello 1\n" and result.stderr.endswith(b"warn 1\n")


NOTEBOOK_BAR = """\
import sys, time

def bar(launcher):
    if launcher.rank == 0:
        for i in range(4):
            sys.stderr.write(f"\\rbar {i}/3")
            sys.stderr.flush()
            time.sleep(0.01)
        sys.stderr.write("\\n")
    print("done", launcher.rank)

launcher(bar, launcher)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_notebook_cell_shows_a_carriage_return_bar_as_one_line(tmp_path: Path) -> None:
    from helpers import SETUP, client, errors, notebook, run

    nb = notebook(SETUP, NOTEBOOK_BAR)
    with client(nb, tmp_path) as nb_client:
        assert not errors(run(nb_client, 0))
        cell = run(nb_client, 1)
    assert not errors(cell), errors(cell)
    streams = {o.name: "" for o in cell.outputs if o.output_type == "stream"}
    for o in cell.outputs:
        if o.output_type == "stream":
            streams[o.name] += o.text
    err = streams.get("stderr", "")
    assert err.count("\r[rank0]: bar ") == 4, err
    shown = [line for line in _terminal_view(err.encode()) if b"bar" in line]
    assert shown == [b"[rank0]: bar 3/3"], err
    assert "[rank0]: done 0\n" in streams.get("stdout", "")
    assert "[rank1]: done 1\n" in streams.get("stdout", "")


@pytest.mark.timeout(RUN_TIMEOUT_S * 2)
def test_a_script_traceback_is_prefixed_once_and_reported_once(tmp_path: Path) -> None:
    job = tmp_path / "boom.py"
    job.write_text('import os\nif os.environ["RANK"] == "1":\n    raise ValueError("shard 7")\n')
    result = run_in_pipes(icelaunch("--devices", "cpu:0-1", str(job)), ROOT)
    assert result.returncode == 1, result.stderr
    err = result.stderr.decode()
    assert "[rank1]: Traceback (most recent call last):\n" in err
    assert "[rank1]: [rank1]" not in err and "runpy" not in err and "_script.py" not in err
    assert err.count(f'[rank1]:   File "{job}", line 3, in <module>') == 1
