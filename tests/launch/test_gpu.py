"""Real CUDA launches: run where GPUs exist, skipped cleanly elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from helpers import assert_gone, icelaunch, launch, write
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


# --- the device grammar on real GPUs: every rank on the GPU it was given ----------------------
# CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, the order nvidia-smi
# shows; the workers of these tests get PCI_BUS_ID, so that spec indices are nvidia-smi's.

NEEDS_SMI = pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")


def smi_uuids() -> list[str]:
    """The UUIDs of the GPUs this process's spec indices name, by nvidia-smi (without the
    ``GPU-`` prefix); a ``CUDA_VISIBLE_DEVICES`` of the caller is followed."""
    argv = ["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    rows = (line.split(",", 1) for line in out.splitlines() if line.strip())
    by_index = {int(index): uuid.strip().removeprefix("GPU-") for index, uuid in rows}
    caller = os.environ.get("CUDA_VISIBLE_DEVICES")
    if caller is None:
        return [by_index[i] for i in sorted(by_index)]
    entries = [e.strip() for e in caller.split(",")]
    return [by_index[int(e)] if e.isdigit() else e.removeprefix("GPU-") for e in entries]


def subset(which: str) -> list[int]:
    """``last``: the last GPU alone; ``reversed``: the last two, in reverse order."""
    n = torch.cuda.device_count()
    if which == "reversed" and n < 2:
        pytest.skip("needs two GPUs")
    return [n - 1] if which == "last" else [n - 1, n - 2]


def spec_of(indices: list[int]) -> str:
    return "cuda:" + ",".join(map(str, indices))


@pytest.fixture
def pci_order(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of the launch: CUDA numbers GPUs as nvidia-smi does."""
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return dict(os.environ)


def gpu_identity(launcher: ElasticLauncher) -> dict[str, Any]:
    device = launcher.assigned_device
    t = torch.ones(1, device=device) * (launcher.rank + 1)
    dist.all_reduce(t)
    return {
        "uuid": str(torch.cuda.get_device_properties(device).uuid),
        "device": str(device),
        "current": torch.cuda.current_device(),
        "LOCAL_RANK": os.environ["LOCAL_RANK"],
        "sum": float(t.item()),
    }


@NEEDS_SMI
@pytest.mark.parametrize("which", ["last", "reversed"])
def test_functions_run_on_the_gpus_the_spec_names(which: str, pci_order: dict[str, str]) -> None:
    indices = subset(which)
    uuids = smi_uuids()
    launcher = ElasticLauncher(spec_of(indices), **FAST).freeze()
    assert launcher.dist_backend == "nccl"
    results = launcher(gpu_identity, launcher)
    n = len(indices)
    for rank, seen in results.items():
        assert seen["uuid"] == uuids[indices[rank]], (rank, seen, uuids)
        assert (seen["device"], seen["current"]) == (f"cuda:{rank}", rank)
        assert seen["LOCAL_RANK"] == str(rank)
        assert seen["sum"] == n * (n + 1) / 2  # nccl all_reduce on the subset


@NEEDS_SMI
def test_functions_with_virtual_local_rank_see_their_gpu_as_cuda_0(
    pci_order: dict[str, str],
) -> None:
    indices = subset("reversed") if torch.cuda.device_count() > 1 else subset("last")
    uuids = smi_uuids()
    launcher = ElasticLauncher(spec_of(indices), virtual_local_rank=True, **FAST).freeze()
    results = launcher(gpu_identity, launcher)
    for rank, seen in results.items():
        assert seen["uuid"] == uuids[indices[rank]], (rank, seen, uuids)
        assert (seen["device"], seen["current"], seen["LOCAL_RANK"]) == ("cuda:0", 0, "0")


TORCHRUN_SCRIPT = """
    import json, os, sys

    import torch
    import torch.distributed as dist

    import icelaunch

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # as scripts written for torchrun do
    dist.init_process_group("nccl")
    t = torch.ones(1, device="cuda") * (dist.get_rank() + 1)
    dist.all_reduce(t)
    seen = {
        "uuid": str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid),
        "current": torch.cuda.current_device(),
        "assigned": str(icelaunch.current().assigned_device),
        "sum": t.item(),
    }
    with open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w") as fh:
        json.dump(seen, fh)
    dist.destroy_process_group()
"""

ACCELERATE_SCRIPT = """
    import json, os, sys

    import torch
    from accelerate import Accelerator

    import icelaunch

    accelerator = Accelerator()
    t = torch.ones(1, device=accelerator.device) * (accelerator.process_index + 1)
    t = accelerator.reduce(t, "sum")
    seen = {
        "uuid": str(torch.cuda.get_device_properties(accelerator.device).uuid),
        "current": torch.cuda.current_device(),
        "assigned": str(icelaunch.current().assigned_device),
        "sum": t.item(),
    }
    path = os.path.join(sys.argv[1], f"rank{accelerator.process_index}.json")
    with open(path, "w") as fh:
        json.dump(seen, fh)
    accelerator.end_training()
"""


def run_gpu_script(
    tmp_path: Path, code: str, indices: list[int], env: dict[str, str], *options: str
) -> dict[int, dict[str, Any]]:
    script = write(tmp_path, "gpu_script.py", code)
    out = tmp_path / "out"
    out.mkdir()
    argv = icelaunch("--devices", spec_of(indices), *options, str(script), str(out))
    result = launch(argv, env=env, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


@NEEDS_SMI
@pytest.mark.parametrize("which", ["last", "reversed"])
@pytest.mark.parametrize(
    "code", [TORCHRUN_SCRIPT, ACCELERATE_SCRIPT], ids=["torchrun", "accelerate"]
)
def test_scripts_using_local_rank_run_on_the_gpus_the_spec_names(
    which: str, code: str, tmp_path: Path, pci_order: dict[str, str]
) -> None:
    if code is ACCELERATE_SCRIPT:
        pytest.importorskip("accelerate")
    indices = subset(which)
    uuids = smi_uuids()
    results = run_gpu_script(tmp_path, code, indices, pci_order)
    n = len(indices)
    assert sorted(results) == list(range(n))
    for rank, seen in results.items():
        assert seen["uuid"] == uuids[indices[rank]], (rank, seen, uuids)
        assert (seen["current"], seen["assigned"]) == (rank, f"cuda:{rank}")
        assert seen["sum"] == n * (n + 1) / 2


def test_ranks_of_a_node_reach_each_other_peer_to_peer(
    tmp_path: Path, pci_order: dict[str, str]
) -> None:
    """The measurement behind per-node narrowing (docs/devices.md): under it, NCCL
    connects the ranks of a node peer to peer. What per-rank narrowing
    (``--virtual-local-rank``) gets is printed alongside, for the record."""
    indices = subset("reversed")
    if not torch.cuda.can_device_access_peer(indices[0], indices[1]):
        pytest.skip("these GPUs cannot reach each other peer to peer")
    env = {**pci_order, "NCCL_DEBUG": "INFO"}
    transports = {}
    for mode, options in (("per node", ()), ("per rank", ("--virtual-local-rank",))):
        script = write(tmp_path / mode.replace(" ", "_"), "p2p.py", TORCHRUN_SCRIPT)
        out = script.parent / "out"
        out.mkdir()
        argv = icelaunch("--devices", spec_of(indices), *options, str(script), str(out))
        result = launch(argv, env=env, timeout=150)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = (result.stdout + result.stderr).splitlines()
        transports[mode] = sorted({line.split(" via ", 1)[1] for line in lines if " via " in line})
    print(f"NCCL transports between the ranks of a node: {transports}", file=sys.stderr)
    assert any(t.startswith("P2P") for t in transports["per node"]), transports


def gpu_tensor(launcher: ElasticLauncher) -> torch.Tensor:
    return torch.full((4,), float(launcher.rank), device=launcher.assigned_device)


@pytest.mark.parametrize("which", ["last", "reversed"])
def test_cuda_results_come_back_on_the_same_gpus(which: str) -> None:
    """The ranks see their GPUs as cuda:0, cuda:1; the launcher gets each tensor back on
    its own number of the rank's GPU."""
    indices = subset(which)
    launcher = ElasticLauncher(spec_of(indices), **FAST).freeze()
    results = launcher(gpu_tensor, launcher)
    for rank, value in results.items():
        assert value.device == torch.device(f"cuda:{indices[rank]}")
        assert torch.equal(value.cpu(), torch.full((4,), float(rank)))
