"""Real CUDA launches: run where GPUs exist, skipped cleanly elsewhere."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import assert_gone
from icelaunch import ElasticLauncher, LaunchTimeoutError, WorkerFailedError, wait_teardown
from icelaunch._transfer import UnsupportedTransferError

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA devices"),
]

FAST = {"monitor_interval": 0.5}


def cuda_worker(launcher: ElasticLauncher) -> tuple[str, int, float]:
    device = launcher.assigned_device
    assert torch.cuda.current_device() == device.index
    t = torch.ones(1, device=device) * (launcher.rank + 1)
    dist.all_reduce(t)
    return str(device), torch.cuda.current_device(), float(t.item())


def test_nccl_all_reduce_on_every_gpu() -> None:
    launcher = ElasticLauncher("cuda:*", **FAST).freeze()
    assert launcher.dist_backend == "nccl"
    n = torch.cuda.device_count()
    results = launcher(cuda_worker, launcher)
    assert results == {r: (f"cuda:{r}", r, n * (n + 1) / 2) for r in range(n)}


def test_one_gpu_shared_by_two_workers_uses_gloo() -> None:
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    assert launcher.dist_backend == "gloo"
    results = launcher(cuda_worker, launcher)
    assert [v[0] for v in results.values()] == ["cuda:0", "cuda:0"]


def test_back_to_back_launches_on_the_same_gpus() -> None:
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    first = launcher(cuda_worker, launcher)
    assert launcher(cuda_worker, launcher) == first  # waits for the first's workers
    wait_teardown()


def test_a_real_cuda_tensor_argument_is_refused_before_any_worker_starts() -> None:
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    t = torch.ones(4, device="cuda:0")
    with pytest.raises(UnsupportedTransferError, match=r"CUDA tensor of shape \(4,\).*t\.cpu\(\)"):
        launcher(cuda_worker, launcher, {"x": [t]})


def to_device_and_sum(launcher: ElasticLauncher, t: torch.Tensor) -> tuple[float, str]:
    on_gpu = t.to(launcher.assigned_device)
    return float(on_gpu.double().sum().item()), str(on_gpu.device)


def test_a_large_cpu_argument_reaches_gpu_workers_intact() -> None:
    t = torch.arange(64 * 2**20, dtype=torch.float32)  # 256 MB
    expected = float(t.double().sum().item())
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    results = launcher(to_device_and_sum, launcher, t)
    assert results == {0: (expected, "cuda:0"), 1: (expected, "cuda:0")}


def test_a_pinned_argument_reaches_gpu_workers_and_the_caller_keeps_its_values() -> None:
    """Pinned memory is never given back early during the move (see _shared_move)."""
    t = torch.arange(16 * 2**20, dtype=torch.float32).pin_memory()  # 64 MB
    expected = float(t.double().sum().item())
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    results = launcher(to_device_and_sum, launcher, t)
    assert results == {0: (expected, "cuda:0"), 1: (expected, "cuda:0")}
    assert torch.equal(t, torch.arange(16 * 2**20, dtype=torch.float32))


def cuda_result(launcher: ElasticLauncher) -> torch.Tensor:
    return torch.full((1024,), float(launcher.rank), device=launcher.assigned_device)


def test_cuda_results_come_back_by_value() -> None:
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    results = launcher(cuda_result, launcher)
    for rank, value in results.items():
        assert value.device.type == "cuda"
        assert torch.equal(value.cpu(), torch.full((1024,), float(rank)))


def fail_on_rank_1(launcher: ElasticLauncher, folder: str) -> None:
    Path(folder, str(os.getpid())).touch()
    torch.ones(1, device=launcher.assigned_device)  # CUDA initialised in every rank
    if launcher.rank == 1:
        raise ValueError("rank one gives up on the GPU")
    t = torch.ones(1, device=launcher.assigned_device)
    dist.all_reduce(t)  # rank 0 waits for rank 1, which never comes


def test_a_failing_rank_on_a_gpu_is_named(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cuda:0,0", **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(fail_on_rank_1, launcher, str(tmp_path))
    assert_gone(int(p.name) for p in tmp_path.iterdir())
    err = info.value
    assert err.first.rank == 1
    assert "ValueError: rank one gives up on the GPU" in str(err)


def stuck_on_rank_1(launcher: ElasticLauncher, folder: str) -> None:
    Path(folder, str(os.getpid())).touch()
    t = torch.ones(1, device=launcher.assigned_device)
    if launcher.rank == 1:
        time.sleep(600)
    dist.all_reduce(t)


def test_a_timeout_on_gpus_shows_where_each_rank_is(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cuda:0,0", timeout=30, **FAST).freeze()
    with pytest.raises(LaunchTimeoutError) as info:
        launcher(stuck_on_rank_1, launcher, str(tmp_path))
    assert_gone(int(p.name) for p in tmp_path.iterdir())
    message = str(info.value)
    assert "rank 1: time.sleep(600)" in message, message
    assert "rank 0: dist.all_reduce(t)" in message, message
