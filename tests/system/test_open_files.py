"""Many tensor arguments and results under a low open-file limit (issue 23, point 6).

Each moved tensor used to keep a descriptor of its own for the life of the process:
under ``ulimit -n 256``, 600 arguments failed with a misleading "must be picklable"
error, left the process at its limit and failed the next launch. Run in fresh
interpreters, the limit set with ``resource.setrlimit``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

MANY = """
import os, resource, sys
import torch
from icelaunch import ElasticLauncher

def first_values(launcher, tensors):
    return [float(t[0]) for t in tensors]

def many_results(launcher, count):
    return [torch.full((262144,), float(i)) for i in range(count)]  # 1 MiB each

def rank(launcher):
    return launcher.rank

def open_files():
    return len(os.listdir("/proc/self/fd"))

if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    tensors = [torch.full((393216,), float(i)) for i in range(600)]  # 1.5 MiB each
    assert launcher(rank, launcher) == {0: 0, 1: 1}  # the launcher's own files are open
    before = open_files()
    assert launcher(first_values, launcher, tensors)[1] == [float(i) for i in range(600)]
    print("kept open after the launch:", open_files() - before)
    assert open_files() - before < 8, os.listdir("/proc/self/fd")
    assert launcher(first_values, launcher, tensors)[0][599] == 599.0  # again: no copy
    results = launcher(many_results, launcher, 300)
    assert [float(t[0]) for t in results[1]] == [float(i) for i in range(300)]
    assert launcher(rank, launcher) == {0: 0, 1: 1}
    del tensors, results
    print("kept open once they are freed:", open_files() - before)
    assert open_files() - before < 8
    print("ok")
"""

TOO_MANY_ALONE = """
import os, resource
import torch
from icelaunch import ElasticLauncher, _transfer
from icelaunch._transfer import _storages

def rank(launcher, tensors=None):
    return launcher.rank

if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    _storages.PACK_BELOW = 1 << 20  # as if each were 64 MiB or more: a file each
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    tensors = [torch.full((393216,), float(i)) for i in range(300)]
    try:
        launcher(rank, launcher, tensors)
    except _transfer.OpenFileLimitError as exc:
        print("refused:", exc)
    else:
        raise AssertionError("not refused")
    assert not any(t.is_shared() for t in tensors)  # nothing moved
    assert launcher(rank, launcher, tensors[:50]) == {0: 0, 1: 1}  # the process is usable
    print("ok")
"""


def _run(tmp_path: Path, code: str) -> str:
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert out.returncode == 0 and out.stdout.rstrip().endswith("ok"), out.stdout + out.stderr
    assert not list(tmp_path.glob("icelaunch_*")), "job folders left behind"
    return out.stdout


def test_many_tensors_under_a_low_open_file_limit(tmp_path: Path) -> None:
    print(_run(tmp_path, MANY))


def test_too_many_large_tensors_are_refused_before_any_moves(tmp_path: Path) -> None:
    out = _run(tmp_path, TOO_MANY_ALONE)
    print(out)
    assert "open-file limit of 256 (ulimit -n)" in out and "nothing was moved" in out, out
