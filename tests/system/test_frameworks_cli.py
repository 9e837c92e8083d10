"""Real frameworks' scripts under the ``icelaunch`` command: Accelerate, Ignite, Fabric.

Each test checks ranks, world size and a collective's result. Frameworks are test
extras (``pip install -e .[test]``); a missing one skips its tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from helpers import icelaunch, launch, write

pytestmark = pytest.mark.timeout(180)


def needs(module: str) -> None:
    """Skip without ``module``; found without importing it here (lightning sets
    environment variables on import, which the leak check would flag)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e .[test])")


@pytest.mark.timeout(300)
def test_accelerates_shipped_test_script_under_the_command() -> None:
    needs("accelerate")
    spec = importlib.util.find_spec("accelerate")
    assert spec is not None and spec.origin is not None
    script = Path(spec.origin).parent / "test_utils" / "scripts" / "test_script.py"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    result = launch(icelaunch("--nproc-per-node", "2", str(script)), env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        assert f"[rank{rank}]: Distributed environment: DistributedType.MULTI_CPU" in result.stdout
        assert f"[rank{rank}]: Num processes: 2" in result.stdout
        assert f"[rank{rank}]: Process index: {rank}" in result.stdout
    assert "**Test reinstantiated state**" in result.stdout  # its last test was reached


# --- Ignite --------------------------------------------------------------------------------

IGNITE_SCRIPT = """
import sys
import torch
import ignite.distributed as idist


def training(local_rank, tag):
    t = torch.tensor([float(idist.get_rank() + 1)])
    total = idist.all_reduce(t).item()
    gathered = idist.all_gather(torch.tensor([idist.get_rank()])).tolist()
    print(tag, idist.get_rank(), idist.get_world_size(), idist.get_local_rank(),
          idist.backend(), total, gathered, flush=True)


if __name__ == "__main__":
    with idist.Parallel(backend="gloo") as parallel:
        parallel.run(training, sys.argv[1])
"""


def test_ignite_parallel_in_a_script_under_the_command(tmp_path: Path) -> None:
    needs("ignite")
    path = write(tmp_path, "ignite_train.py", IGNITE_SCRIPT)
    result = launch(icelaunch("--nproc-per-node", "2", str(path), "IGNITE"), timeout=120)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"[rank{rank}]: IGNITE {rank} 2 {rank} gloo 3.0 [0, 1]" in result.stdout


# --- Lightning Fabric ----------------------------------------------------------------------

FABRIC_SCRIPT = """
import torch
from lightning.fabric import Fabric

fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
fabric.launch()
t = torch.tensor([float(fabric.global_rank + 1)])
total = fabric.all_reduce(t, reduce_op="sum")
print("FABRIC", fabric.global_rank, fabric.world_size, fabric.local_rank, total.item(), flush=True)
"""


@pytest.mark.timeout(300)
def test_fabric_script_under_the_command(tmp_path: Path) -> None:
    needs("lightning")
    path = write(tmp_path, "fabric_train.py", FABRIC_SCRIPT)
    result = launch(icelaunch("--nproc-per-node", "2", str(path)), timeout=240)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"[rank{rank}]: FABRIC {rank} 2 {rank} 3.0" in result.stdout
