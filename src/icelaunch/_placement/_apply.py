"""In the worker, before user code and before CUDA: the rank's placement put in effect."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from icelaunch import _torch_internals
from icelaunch._placement._plan import CUDA_VISIBLE, OMP_THREADS, RankPlacement, plan
from icelaunch._placement._threads import size_thread_pool
from icelaunch._spec import LaunchSpec


def place(
    spec: LaunchSpec, local_rank: int, env: MutableMapping[str, str] | None = None
) -> RankPlacement:
    """Plan local rank ``local_rank``'s placement from ``env`` (``os.environ``) and apply it.

    Sets ``CUDA_VISIBLE_DEVICES`` (narrowed), ``LOCAL_RANK`` and ``OMP_NUM_THREADS``,
    sizes torch's thread pool, and binds every thread of this process to its
    CPUs with ``numa_binding``. CUDA must not be initialised in this process yet.
    """
    env = os.environ if env is None else env
    placement = plan(spec, local_rank, env)
    if placement.visible is not None:
        if placement.visible != env.get(CUDA_VISIBLE) and cuda_started():
            raise RuntimeError(
                f"CUDA was initialised in this worker before icelaunch could narrow "
                f"{CUDA_VISIBLE} to {placement.visible!r} for devices {list(spec.devices)}, "
                f"so it would run on another GPU than launcher.assigned_device says: code "
                f"run when the worker imports your main module touches CUDA; move it under "
                f"`if __name__ == '__main__':` or into the launched function"
            )
        env[CUDA_VISIBLE] = placement.visible
    env["LOCAL_RANK"] = placement.local_rank_env
    if placement.threads is not None:
        env[OMP_THREADS] = placement.threads
    size_thread_pool(env)
    if placement.numa_binding is not None and placement.numa_gpu is not None:
        _torch_internals.bind_to_gpu_cpus(placement.numa_gpu, placement.numa_binding)
    return placement


def cuda_started() -> bool:
    """Whether torch has initialised CUDA in this process (then its GPUs are fixed)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())
