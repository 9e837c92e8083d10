"""Scripts written for torchrun under the ``icelaunch`` command: stray variables,
hints that fit their case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import STRAY, icelaunch, launch, write

pytestmark = pytest.mark.timeout(120)


@pytest.mark.timeout(90)
def test_stray_world_size_does_not_hang_the_command(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ranks.py",
        """
        import os
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        print("rank", dist.get_rank(), "of", dist.get_world_size(), "sum", t.item())
        dist.destroy_process_group()
        """,
    )
    env = {**os.environ, **STRAY}
    result = launch(icelaunch("--nproc-per-node", "2", str(path)), env=env)
    assert result.returncode == 0, result.stderr
    assert "[rank0]: rank 0 of 2 sum 3.0" in result.stdout
    assert "[rank1]: rank 1 of 2 sum 3.0" in result.stdout


# --- 6. hints that fit their case ----------------------------------------------------------

MAIN_GUARD = '__name__ == "__main__"'


@pytest.mark.timeout(90)
def test_a_silent_failing_script_is_not_given_the_main_guard_hint(tmp_path: Path) -> None:
    path = write(
        tmp_path, "quiet.py", "import os\nos._exit(3 if os.environ['RANK'] == '0' else 0)\n"
    )
    result = launch(icelaunch("--nproc-per-node", "2", str(path)))
    assert result.returncode == 3, result.stderr
    assert "rank 0" in result.stderr and MAIN_GUARD not in result.stderr
