"""Where each rank runs: the GPUs it sees, the CPUs it may use, its threads.

Data flow::

    launcher:  LaunchSpec + os.environ --check_launch--> every rank planned (a GPU
               the caller's CUDA_VISIBLE_DEVICES hides is an error now, not in a
               worker); torchrun's OMP_NUM_THREADS warning, once
    worker:    a function's: narrow(its CUDA_VISIBLE_DEVICES, planned by the launcher)
               before its job (and the user's modules) is unpickled; then
               LaunchSpec + local rank + the launcher's environment
               --plan--> RankPlacement --place--> CUDA_VISIBLE_DEVICES narrowed,
               LOCAL_RANK, OMP_NUM_THREADS, torch's thread pool, NUMA binding;
               before user code and before CUDA
    context:   device_seen(spec, local_rank) -> launcher.assigned_device
    result:    in_launcher_numbering: a CUDA tensor a rank returns is restored on the
               launcher's number of the same GPU

A ``cuda:`` list that is not every GPU in order narrows per node: every rank of
the node sees the node's GPUs, in spec order, so ``cuda:LOCAL_RANK`` is its own
and NCCL's peer-to-peer paths between them stay open. ``virtual_local_rank``
narrows per rank (``cuda:0``, ``LOCAL_RANK=0``), as torchrun's option does.
"""

from __future__ import annotations

from collections.abc import Mapping

from icelaunch._placement._apply import narrow, place
from icelaunch._placement._plan import CUDA_VISIBLE, RankPlacement, device_seen, plan
from icelaunch._placement._results import in_launcher_numbering
from icelaunch._placement._threads import threads_notice, warn_once
from icelaunch._spec import LaunchSpec

__all__ = [
    "CUDA_VISIBLE",
    "RankPlacement",
    "check_launch",
    "device_seen",
    "in_launcher_numbering",
    "narrow",
    "place",
    "plan",
    "threads_notice",
]


def check_launch(spec: LaunchSpec, env: Mapping[str, str]) -> list[RankPlacement]:
    """Plan every local rank of ``spec`` launched with ``env``; warn as torchrun does
    when several ranks get ``OMP_NUM_THREADS=1`` by default.

    Raises:
        ValueError: a GPU of the spec is not among those ``CUDA_VISIBLE_DEVICES`` leaves.
    """
    try:
        placements = [plan(spec, r, env) for r in range(spec.nproc_per_node)]
    except ValueError as exc:
        raise ValueError(f"invalid devices {list(spec.devices)}: {exc}") from None
    warn_once(spec, env)
    return placements
