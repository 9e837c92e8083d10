"""Worker output as a terminal shows it: live, rank-prefixed, progress bars intact.

Launches run under a real pseudo-terminal (Python's ``pty`` module) or into
pipes, with real tqdm, and the tests assert on the exact bytes the launcher's
console received.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time
import tty
from pathlib import Path

import pytest

from icelaunch._console._screen import HOLD_S, Screen, Source
from icelaunch._console._text import CR, LINE, NONE, check_template, expand, place_prefixes
from test_cli import icelaunch

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 120
COLUMNS, ROWS = 100, 30
PREFIX = "[rank0]: "
# shutil.get_terminal_size() prefers these to the terminal; a shell rarely exports them
ENV = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}

# --- pure parts -------------------------------------------------------------------------

PLACE_CASES = [
    (b"a\nb\n", LINE, b"> a\n> b\n", LINE),
    (b"partial", LINE, b"> partial", NONE),
    (b" more\n", NONE, b" more\n", LINE),
    (b"\r 10%\r 20%", NONE, b"\r>  10%\r>  20%", NONE),
    (b"\r", NONE, b"\r", CR),  # the prefix waits for the redraw's first byte
    (b"x", CR, b"> x", NONE),
    (b"\n", CR, b"\n", LINE),  # \r\n line end: no second prefix
    (b"\n\n", LINE, b"> \n> \n", LINE),  # empty lines carry the prefix too
    (b"", LINE, b"", LINE),
]


@pytest.mark.parametrize(("data", "state", "shown", "after"), PLACE_CASES)
def test_prefix_at_line_starts_and_after_carriage_returns(
    data: bytes, state: int, shown: bytes, after: int
) -> None:
    assert place_prefixes(data, b"> ", state) == (shown, after)
    assert place_prefixes(data, b"", state)[0] == data  # no prefix: bytes unchanged


TEMPLATE_CASES = [
    ("[rank${rank}]: ", "[rank3]: "),
    ("${role_name}/${group_rank}/${local_rank} ", "trainer/1/2 "),
    ("$rank$$ ", "3$ "),
    ("", ""),
]


@pytest.mark.parametrize(("template", "expected"), TEMPLATE_CASES)
def test_prefix_templates(template: str, expected: str) -> None:
    fields = {"rank": 3, "local_rank": 2, "role_name": "trainer", "group_rank": 1}
    assert expand(check_template(template), fields) == expected.encode()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("${nodename}", r"'\$\{nodename\}' is not one of \$\{rank\}"),
        ("cost: $5", r"'\$' is not one of"),
    ],
)
def test_bad_templates_are_named(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_template(template)
    with pytest.raises(TypeError, match="must be str"):
        check_template(3)


def _screen_with(n: int) -> tuple[Screen, list[Source], list[bytes]]:
    shown: list[bytes] = []
    screen = Screen()
    sources = [Source(f"[{i}] ".encode(), shown.append) for i in range(n)]
    return screen, sources, shown


def test_a_partial_line_alone_is_shown_at_once() -> None:
    screen, (a,), shown = _screen_with(1)
    screen.feed(a, b"loading...", 0.0)
    assert screen.pump(0.0) is None
    assert b"".join(shown) == b"[0] loading..."


def test_ranks_never_interleave_mid_line() -> None:
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"a1\na2 ha", 0.0)
    screen.feed(b, b"b1\nb2 ", 0.0)
    screen.pump(0.0)
    screen.feed(a, b"lf\n", 0.001)
    screen.feed(b, b"half\n", 0.001)
    screen.pump(0.001)
    lines = b"".join(shown).split(b"\n")
    assert lines == [b"[0] a1", b"[1] b1", b"[0] a2 half", b"[1] b2 half", b""]


def test_an_open_line_yields_after_hold_and_resumes_with_its_prefix() -> None:
    screen, (bar, log), shown = _screen_with(2)
    screen.feed(bar, b"\r 10%", 0.0)
    screen.pump(0.0)
    screen.feed(log, b"epoch 1\n", 0.01)
    deadline = screen.pump(0.01)
    assert b"".join(shown) == b"\r[0]  10%"  # the bar keeps the line a moment
    assert deadline == pytest.approx(HOLD_S)
    screen.pump(HOLD_S)
    screen.feed(bar, b"\r 20%", HOLD_S + 0.01)
    screen.pump(HOLD_S + 0.01, final=True)
    assert b"".join(shown) == b"\r[0]  10%\n[1] epoch 1\n\r[0]  20%\n"


def test_a_stale_partial_line_is_shown_while_others_wait() -> None:
    screen, (a, b), shown = _screen_with(2)
    screen.feed(a, b"no newline yet", 0.0)
    screen.feed(b, b"also partial", 0.0)
    screen.pump(0.0)
    assert shown == []
    screen.pump(HOLD_S)
    assert b"".join(shown) == b"[0] no newline yet"


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
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5, **OPTIONS).freeze()
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


def _job(tmp_path: Path, code: str, **options: object) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(code).replace("**OPTIONS", f"**{options!r}"))
    return path


def run_in_pty(argv: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run ``argv`` with a raw pseudo-terminal as stdout and stderr; all it wrote."""
    master, slave = os.openpty()
    tty.setraw(slave)  # the launcher's bytes arrive unchanged (no \n -> \r\n)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    proc = subprocess.Popen(
        argv, cwd=cwd, env=ENV, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            chunks.append(data)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, b"".join(chunks)


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
    code, out = run_in_pty([sys.executable, str(_job(tmp_path, FUNCTION_JOB))], tmp_path)
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
    code, out = run_in_pty(icelaunch("--devices", "cpu:0-1", str(job)), ROOT)
    assert code == 0, out
    width = COLUMNS - len(PREFIX)
    assert f"[rank0]: SEEN 0 True True {width}\n".encode() in out, out
    assert f"[rank1]: SEEN 1 True True {width}\n".encode() in out, out
    _assert_redraws_in_place(out, b"tq:")


def _terminal_view(out: bytes) -> list[bytes]:
    """The lines a terminal leaves on screen: after each ``\\r``, the line is rewritten."""
    return [line.rsplit(b"\r", 1)[-1] for line in out.split(b"\n")]


def test_terminal_view_helper() -> None:
    assert _terminal_view(b"\r[r]: 1\r[r]: 2\nx") == [b"[r]: 2", b"x"]


_ = (re, _terminal_view)
