"""The README's two quick starts, run as a reader would run them: on CPU, in a fresh interpreter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_TIMEOUT_S = 120
CPU_DEVICES = "cpu:0-1"  # what the README tells a reader without GPUs to use, two workers

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _section(title: str) -> str:
    """The README's text under the ``## title`` heading, up to the next ``##`` heading."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def _first_python_block(text: str) -> str:
    match = PYTHON_BLOCK.search(text)
    assert match, "no ```python block"
    return match.group(1)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.timeout(180)
def test_function_quick_start(tmp_path: Path) -> None:
    code = _first_python_block(README.read_text(encoding="utf-8"))
    assert code == _first_python_block(_section("Quick start: a function"))
    assert '"cuda:*"' in code, "the quick start no longer launches on every GPU"
    code = code.replace('"cuda:*"', repr(CPU_DEVICES))
    # The README shows the result in a comment; print it, inside the __main__ guard.
    last = code.rstrip().splitlines()[-1]
    assert last.startswith("    results = "), f"the quick start no longer ends in results: {last}"
    script = tmp_path / "quickstart.py"
    script.write_text(code.rstrip() + '\n    print("RESULTS", repr(results))\n')

    proc = _run([sys.executable, str(script)], tmp_path)

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    found = re.search(r"^RESULTS (.*)$", proc.stdout, re.MULTILINE)
    assert found, out
    assert ast.literal_eval(found.group(1)) == {0: 0, 1: 10}
    for rank in (0, 1):
        assert f"[rank{rank}]: rank {rank}\n" in proc.stdout, out
        assert f"[rank{rank}]: local_rank {rank}\n" in proc.stdout, out
        assert f"[rank{rank}]: device cpu\n" in proc.stdout, out


@pytest.mark.timeout(180)
def test_script_quick_start(tmp_path: Path) -> None:
    section = _section("Quick start: a script")
    assert "icelaunch --devices cpu:0-3 train.py" in section
    script = tmp_path / "train.py"
    script.write_text(_first_python_block(section))

    proc = _run(
        [sys.executable, "-m", "icelaunch", "--devices", CPU_DEVICES, str(script)], tmp_path
    )

    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rank in (0, 1):
        assert f"[rank{rank}]: rank {rank} of 2: sum 1\n" in proc.stdout, out
