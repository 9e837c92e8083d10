"""Diagnosis without a launch: stack dumps parsed and grouped, time limits validated."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

import icelaunch
from icelaunch import ElasticLauncher, _diagnosis
from icelaunch._diagnosis import _format

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


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


def test_a_rank_without_a_stack_is_shown_by_its_note_on_one_line() -> None:
    note = "(no Python stack: it runs `/bin/sh ./run.sh` without icelaunch's stack handler)"
    grouped = _format.group({}, [0, 1, 2], notes={0: note, 1: note})
    assert grouped.splitlines() == [
        f"ranks 0-1: {note}",
        "rank 2: no stack (not yet running Python code of its own, already ended, or no "
        "answer within the time bound)",
    ]


def test_a_crash_dump_in_the_ranks_stderr_is_found(tmp_path: Path) -> None:
    # the program called faulthandler.enable() itself: the dump went to its stderr
    dump = DUMP.format(icelaunch="/x/icelaunch", site=sysconfig.get_paths()["purelib"])
    stderr = tmp_path / "stderr.log"
    stderr.write_text(f"a line before\nFatal Python error: Segmentation fault\n\n{dump}\nExt...\n")
    crash_file = tmp_path / "crash.txt"
    crash_file.write_text("")
    text = _diagnosis.crash_stack(str(crash_file), str(stderr))
    first, *rest = text.splitlines()
    assert first == "Fatal Python error: Segmentation fault (Python stack at the crash, most " \
        "recent call last):"  # fmt: skip
    assert '> File "/home/u/train.py", line 120, in step' in rest
    assert _diagnosis.crash_stack(str(crash_file), None) == ""
    crash_file.write_text(f"Fatal Python error: Bus error\n\n{dump}")  # icelaunch's file first
    assert _diagnosis.crash_stack(str(crash_file), str(stderr)).startswith("Fatal Python error: B")


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
