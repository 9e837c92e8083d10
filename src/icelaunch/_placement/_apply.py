"""In the worker, before user code and before CUDA: the rank's placement put in effect."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

from icelaunch import _torch_internals
from icelaunch._placement._plan import CUDA_VISIBLE, OMP_THREADS, RankPlacement, plan
from icelaunch._placement._threads import size_thread_pool
from icelaunch._spec import LaunchSpec


def narrow(visible: str | None, env: MutableMapping[str, str] | None = None) -> None:
    """Set ``CUDA_VISIBLE_DEVICES`` to ``visible`` (None: leave it) before CUDA starts.

    Raises:
        RuntimeError: CUDA started in this process already, with other GPUs visible.
    """
    env = os.environ if env is None else env
    if visible is None or env.get(CUDA_VISIBLE) == visible:
        return
    if cuda_started():
        raise RuntimeError(
            f"CUDA was initialised in this worker before icelaunch could narrow "
            f"{CUDA_VISIBLE} to {visible!r}, so it would run on another GPU than "
            f"launcher.assigned_device says: code run when the worker imports your main "
            f"module touches CUDA; move it under `if __name__ == '__main__':` or into the "
            f"launched function"
        )
    env[CUDA_VISIBLE] = visible


def place(
    spec: LaunchSpec,
    local_rank: int,
    env: MutableMapping[str, str] | None = None,
    caller: Mapping[str, str] | None = None,
) -> RankPlacement:
    """Plan local rank ``local_rank``'s placement and apply it to ``env`` (``os.environ``).

    ``caller``: the launcher's environment (its ``CUDA_VISIBLE_DEVICES`` and
    ``OMP_NUM_THREADS``), if ``env`` no longer shows it; else ``env`` is.

    Sets ``CUDA_VISIBLE_DEVICES`` (narrowed), ``LOCAL_RANK`` and ``OMP_NUM_THREADS``,
    sizes torch's thread pool, and binds every thread of this process to its
    CPUs with ``numa_binding``. CUDA must not be initialised in this process yet.
    """
    env = os.environ if env is None else env
    placement = plan(spec, local_rank, env if caller is None else caller)
    narrow(placement.visible, env)
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
