"""Real frameworks under icelaunch, as their users write them: Accelerate, Ignite, Fabric.

Each test checks ranks, world size and a collective's result. Frameworks are test
extras (``pip install -e .[test]``); a missing one skips its tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from icelaunch import ElasticLauncher
from test_cli import icelaunch, launch, write

pytestmark = pytest.mark.timeout(180)

FAST = {"monitor_interval": 0.5}


def needs(module: str) -> None:
    """Skip without ``module``; found without importing it here (lightning sets
    environment variables on import, which the leak check would flag)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e .[test])")


# --- Accelerate ----------------------------------------------------------------------------


def accelerate_worker(launcher: ElasticLauncher) -> dict[str, Any]:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    gathered = accelerator.gather(torch.tensor([float(accelerator.process_index + 1)]))
    summed = accelerator.reduce(torch.tensor([float(accelerator.process_index + 1)]), "sum")
    return {
        "index": accelerator.process_index,
        "local": accelerator.local_process_index,
        "processes": accelerator.num_processes,
        "type": str(accelerator.distributed_type),
        "gathered": gathered.tolist(),
        "sum": summed.item(),
        "rank": launcher.rank,
    }


def test_accelerator_inside_a_launched_function() -> None:
    needs("accelerate")
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(accelerate_worker, launcher)
    for rank, value in results.items():
        assert (value["index"], value["local"], value["rank"]) == (rank, rank, rank)
        assert value["processes"] == 2 and value["type"].endswith("MULTI_CPU")
        assert value["gathered"] == [1.0, 2.0] and value["sum"] == 3.0


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


def ignite_worker(launcher: ElasticLauncher) -> dict[str, Any]:
    import ignite.distributed as idist

    def training(local_rank: int, out: dict[str, Any]) -> None:
        t = torch.tensor([float(idist.get_rank() + 1)])
        out.update(
            rank=idist.get_rank(),
            world=idist.get_world_size(),
            local=local_rank,
            backend=idist.backend(),
            sum=idist.all_reduce(t).item(),
        )

    out: dict[str, Any] = {}
    with idist.Parallel(backend="gloo") as parallel:
        parallel.run(training, out)
    return out


def test_ignite_parallel_inside_a_launched_function_with_its_own_group() -> None:
    needs("ignite")
    launcher = ElasticLauncher("cpu:0-1", process_group=False, **FAST).freeze()
    results = launcher(ignite_worker, launcher)
    for rank, value in results.items():
        assert (value["rank"], value["local"], value["world"]) == (rank, rank, 2)
        assert value["backend"] == "gloo" and value["sum"] == 3.0


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


def fabric_worker(launcher: ElasticLauncher) -> dict[str, Any]:
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp")
    fabric.launch()
    total = fabric.all_reduce(torch.tensor([float(fabric.global_rank + 1)]), reduce_op="sum")
    return {
        "rank": fabric.global_rank,
        "local": fabric.local_rank,
        "world": fabric.world_size,
        "sum": total.item(),
        "launcher_rank": launcher.rank,
    }


@pytest.mark.timeout(300)
def test_fabric_inside_a_launched_function() -> None:
    needs("lightning")
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(fabric_worker, launcher)
    for rank, value in results.items():
        assert (value["rank"], value["local"], value["launcher_rank"]) == (rank, rank, rank)
        assert value["world"] == 2 and value["sum"] == 3.0
