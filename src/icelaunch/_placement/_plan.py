"""What one rank sees, as data: its GPUs, its ``LOCAL_RANK``, its device, its threads.

Pure: from the spec, the rank's local rank and the environment the rank starts
with (the launcher's: the caller's ``CUDA_VISIBLE_DEVICES`` and
``OMP_NUM_THREADS``). The worker applies it (``_apply``); the launcher checks it
for every rank before any starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from icelaunch._spec import LaunchSpec

CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"
OMP_THREADS = "OMP_NUM_THREADS"


@dataclass(frozen=True)
class RankPlacement:
    """One rank's placement.

    ``visible``: its ``CUDA_VISIBLE_DEVICES`` (None: the caller's stays);
    ``local_rank_env``: its ``LOCAL_RANK``; ``device``: its device as it sees it
    (``launcher.assigned_device``); ``numa_gpu``: the GPU (as it sees it) whose
    CPUs it is bound to, with ``numa_binding`` (None: no binding); ``threads``: its
    ``OMP_NUM_THREADS`` (None: the caller's stays).
    """

    visible: str | None
    local_rank_env: str
    device: str
    numa_binding: str | None = None
    numa_gpu: int | None = None
    threads: str | None = None


def device_seen(spec: LaunchSpec, local_rank: int) -> str:
    """The rank's device as the rank sees it (``launcher.assigned_device``):
    ``cuda:LOCAL_RANK`` under narrowing, ``cuda:0`` with ``virtual_local_rank``."""
    name = spec.devices[local_rank]
    if not name.startswith("cuda"):
        return name
    if spec.virtual_local_rank:
        return "cuda:0"
    if spec.visible_devices is None:
        return name
    return f"cuda:{spec.visible_devices.index(_index(name))}"


def gpus_seen(spec: LaunchSpec, local_rank: int) -> tuple[int, ...] | None:
    """The GPUs (the caller's indices) the rank sees, in order; None: the caller's."""
    name = spec.devices[local_rank]
    if not name.startswith("cuda"):
        return None
    if spec.virtual_local_rank:
        return (_index(name),)
    return spec.visible_devices


def compose(caller: str | None, indices: tuple[int, ...]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for ``indices`` of the GPUs the caller sees.

    >>> compose(None, (3, 1)), compose("2,3,6,7", (1, 3)), compose("GPU-a,GPU-b", (1,))
    ('3,1', '3,7', 'GPU-b')

    Raises:
        ValueError: an index is past the caller's list (the message names both).
    """
    if caller is None:
        return ",".join(str(i) for i in indices)
    entries = [entry.strip() for entry in caller.split(",")]
    beyond = [i for i in indices if i >= len(entries)]
    if beyond:
        raise ValueError(
            f"GPU {beyond[0]} is not among the {len(entries)} that "
            f"{CUDA_VISIBLE}={caller!r} leaves visible (indices 0-{len(entries) - 1}); "
            f"name GPUs by their index in that list, e.g. devices='cuda:0'"
        )
    return ",".join(entries[i] for i in indices)


def plan(spec: LaunchSpec, local_rank: int, env: Mapping[str, str]) -> RankPlacement:
    """The placement of local rank ``local_rank`` of ``spec``, started with ``env``.

    Raises:
        ValueError: the spec names a GPU the caller's ``CUDA_VISIBLE_DEVICES`` hides.
    """
    seen = gpus_seen(spec, local_rank)
    device = device_seen(spec, local_rank)
    numa_gpu = _index(device) if spec.numa_binding and device.startswith("cuda") else None
    return RankPlacement(
        visible=None if seen is None else compose(env.get(CUDA_VISIBLE), seen),
        local_rank_env="0" if spec.virtual_local_rank else str(local_rank),
        device=device,
        numa_binding=spec.numa_binding if numa_gpu is not None else None,
        numa_gpu=numa_gpu,
        threads=None if OMP_THREADS in env else str(spec.omp_num_threads),
    )


def _index(device: str) -> int:
    return int(device.partition(":")[2] or 0)
