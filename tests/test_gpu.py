"""Real CUDA launches: run where GPUs exist, skipped cleanly elsewhere."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from icelaunch import ElasticLauncher

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA devices"),
]


def cuda_worker(launcher: ElasticLauncher) -> tuple[str, int, float]:
    device = launcher.assigned_device
    assert torch.cuda.current_device() == device.index
    t = torch.ones(1, device=device) * (launcher.rank + 1)
    dist.all_reduce(t)
    return str(device), torch.cuda.current_device(), float(t.item())


def test_nccl_all_reduce_on_every_gpu() -> None:
    launcher = ElasticLauncher("cuda:*", monitor_interval=0.5).freeze()
    assert launcher.dist_backend == "nccl"
    n = torch.cuda.device_count()
    results = launcher(cuda_worker, launcher)
    assert results == {r: (f"cuda:{r}", r, n * (n + 1) / 2) for r in range(n)}


def test_one_gpu_shared_by_two_workers_uses_gloo() -> None:
    launcher = ElasticLauncher("cuda:0,0", monitor_interval=0.5).freeze()
    assert launcher.dist_backend == "gloo"
    results = launcher(cuda_worker, launcher)
    assert [v[0] for v in results.values()] == ["cuda:0", "cuda:0"]
