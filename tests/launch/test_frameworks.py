"""Real frameworks inside launched functions, as their users write them: Accelerate,
Ignite, Fabric.

Each test checks ranks, world size and a collective's result. Frameworks are test
extras (``pip install -e .[test]``); a missing one skips its tests."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from icelaunch import ElasticLauncher

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
