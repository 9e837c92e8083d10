"""Failure reports of scripts under the ``icelaunch`` command: torch's error files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


RECORD_SCRIPT = """
import icelaunch
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    if icelaunch.current().rank == 1:
        raise ValueError("boom on rank 1")

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(120)
def test_script_decorated_with_torch_record_is_reported(tmp_path: Path) -> None:
    script = tmp_path / "recorded.py"
    script.write_text(textwrap.dedent(RECORD_SCRIPT))
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", str(script)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "AttributeError" not in result.stderr
    assert "rank 1 (local rank 1, exit code 1): ValueError: boom on rank 1" in result.stderr
    assert 'raise ValueError("boom on rank 1")' in result.stderr
