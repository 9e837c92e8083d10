"""``OMP_NUM_THREADS``: torchrun's rule, and the warning torchrun prints with it.

A rank gets ``omp_num_threads`` (1 by default) when the launcher's environment
has no ``OMP_NUM_THREADS``; one it has reaches every rank as it is. Several
ranks on a node, each with torch's default of one thread per core, would
oversubscribe the cores: torchrun sets 1 and says so once, and so does icelaunch
(once per process).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from icelaunch._placement._plan import OMP_THREADS
from icelaunch._spec import LaunchSpec

logger = logging.getLogger(__name__)
_told = False


def threads_notice(spec: LaunchSpec, env: Mapping[str, str]) -> str | None:
    """torchrun's warning, for ``spec`` launched with ``env``; None when it does not apply."""
    if OMP_THREADS in env or spec.nproc_per_node < 2 or spec.omp_num_threads != 1:
        return None
    return (
        f"{OMP_THREADS} is not set: each of the {spec.nproc_per_node} workers on this node "
        f"runs with {OMP_THREADS}=1 (omp_num_threads=1), so that they do not overload the "
        f"machine; tune it for your program with omp_num_threads=N or by setting "
        f"{OMP_THREADS}"
    )


def warn_once(spec: LaunchSpec, env: Mapping[str, str]) -> None:
    """Log :func:`threads_notice` the first time it applies in this process."""
    global _told
    notice = threads_notice(spec, env)
    if notice is not None and not _told:
        _told = True
        logger.warning("%s", notice)


def size_thread_pool(env: Mapping[str, str] = os.environ) -> None:
    """torch's intra-op threads follow ``OMP_NUM_THREADS`` (a warm worker imported torch
    before it got its variables); nothing while torch is not imported: it reads them."""
    torch = sys.modules.get("torch")
    value = env.get(OMP_THREADS, "").strip()
    if torch is None or not value.isdigit() or int(value) < 1:
        return
    if torch.get_num_threads() != int(value):
        torch.set_num_threads(int(value))
