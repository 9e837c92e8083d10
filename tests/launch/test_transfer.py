"""Arguments and results through shared memory in real launches: every kind end to
end (checksums computed on both sides), the write semantics, the CUDA refusal (with a
faked device) and nothing left in ``/dev/shm`` after success and failure."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers import FakeCudaTensor, digest, make_kinds, ours_in_dev_shm
from icelaunch import ElasticLauncher, WorkerFailedError, _transfer

pytestmark = pytest.mark.timeout(180)
FAST = {"monitor_interval": 0.5}
MB = 1 << 20


# ---------------------------------------------------------------- real launches


def digest_args(launcher: ElasticLauncher, kinds: dict[str, Any]) -> dict[str, str]:
    return {name: digest(obj) for name, obj in kinds.items()}


def return_kinds(launcher: ElasticLauncher, seed: int) -> dict[str, Any]:
    kinds = make_kinds(seed + launcher.rank)
    kinds["digest"] = {name: digest(obj) for name, obj in kinds.items()}
    return kinds


def test_arguments_of_every_kind_reach_every_worker_intact() -> None:
    kinds = make_kinds(2)
    expected = {name: digest(obj) for name, obj in kinds.items()}
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(digest_args, launcher, kinds)
    assert results == {0: expected, 1: expected}


def test_results_of_every_kind_come_back_intact() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(return_kinds, launcher, 3)
    for rank, kinds in results.items():
        sent_digests = kinds.pop("digest")
        assert {name: digest(obj) for name, obj in kinds.items()} == sent_digests, rank
        assert kinds["float32"].untyped_storage().nbytes() == 4 * 600_000


def write_then_read(
    launcher: ElasticLauncher, t: torch.Tensor, arr: np.ndarray
) -> tuple[float, float]:
    if launcher.rank == 0:
        t[0] = 42.0
        arr[0] = 42.0
    dist.barrier()
    return float(t[0]), float(arr[0])


def test_write_semantics_tensors_shared_arrays_copy_on_write() -> None:
    t, arr = torch.zeros(MB), np.zeros(MB)
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(write_then_read, launcher, t, arr)
    assert results == {0: (42.0, 42.0), 1: (42.0, 0.0)}
    assert t[0] == 42.0 and arr[0] == 0.0


def test_cuda_argument_is_refused_before_any_worker_starts() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    fake = torch.ones(4).as_subclass(FakeCudaTensor)
    with pytest.raises(_transfer.UnsupportedTransferError, match="CUDA tensor of shape"):
        launcher(digest_args, launcher, {"x": fake})


def pid_of(launcher: ElasticLauncher, t: torch.Tensor) -> int:
    return os.getpid()


def fail_on_rank_1(launcher: ElasticLauncher, t: torch.Tensor) -> torch.Tensor:
    if launcher.rank == 1:
        raise ValueError("deliberate")
    return t * 2


def test_nothing_left_in_dev_shm_after_success_and_failure() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    t = torch.ones(2 * MB)
    pids = {os.getpid(), *launcher(pid_of, launcher, t).values()}
    with pytest.raises(WorkerFailedError, match="deliberate"):
        launcher(fail_on_rank_1, launcher, t)
    assert ours_in_dev_shm(pids) == []
    assert _memfds_of(os.getpid()) == []


def _memfds_of(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "icelaunch-transfer" in target:
            found.append(target)
    return found


def make_result(launcher: ElasticLauncher) -> torch.Tensor:
    return torch.full((MB,), float(launcher.rank + 1))  # 4 MB: through shared memory


def total(launcher: ElasticLauncher, t: torch.Tensor) -> float:
    return float(t.sum())


def test_a_result_can_be_an_argument_of_the_next_launch() -> None:
    """A result's storage was a mapping that kept no descriptor while torch called it
    shared: sending it again failed ("Bad file descriptor", told as unpicklable)."""
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    result = launcher(make_result, launcher)[1]
    assert launcher(total, launcher, result) == {0: 2.0 * MB, 1: 2.0 * MB}
