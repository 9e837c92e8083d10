"""Translate a LaunchSpec into torch.distributed.elastic's configuration objects."""

from __future__ import annotations

import os
import uuid
from typing import Any

from torch.distributed.elastic.multiprocessing import Std
from torch.distributed.elastic.rendezvous import RendezvousParameters

from icelaunch._spec import LaunchSpec

DEFAULT_RDZV_TIMEOUT_S = 900
DEFAULT_RDZV_ID = "none"  # the seed's default: no id given


def make_log_dir(log_dir: str | None) -> None:
    """Create ``log_dir`` now, so that a bad one is one clear error, not torch's traceback.

    Raises:
        ValueError: the folder cannot be created (the message names it and why).
    """
    if log_dir is None:
        return
    try:
        os.makedirs(log_dir, exist_ok=True)
    except OSError as exc:
        raise ValueError(
            f"invalid log_dir {log_dir!r}: cannot create it ({exc.strerror}); give a folder "
            f"this user can create, e.g. log_dir='/tmp/icelaunch-logs'"
        ) from exc


def std_maps(spec: LaunchSpec) -> tuple[dict[int, Std], dict[int, Std]]:
    """Per local rank: what goes to files only, and what is teed with a rank prefix.

    Everything the user did not redirect is teed, so console lines carry the rank.
    """
    n = spec.nproc_per_node
    redirects = _expand(Std.from_str(spec.redirects), n)
    tee = _expand(Std.from_str(spec.tee), n)
    teed = {r: Std(int(tee[r]) | (int(Std.ALL) & ~int(redirects[r]))) for r in range(n)}
    only_file = {r: Std(int(redirects[r]) & ~int(teed[r])) for r in range(n)}
    return only_file, teed


def _expand(value: Std | dict[int, Std], n: int) -> dict[int, Std]:
    if isinstance(value, dict):
        return {r: value.get(r, Std.NONE) for r in range(n)}
    return dict.fromkeys(range(n), value)


def run_id_of(spec: LaunchSpec) -> str:
    """The job's ``TORCHELASTIC_RUN_ID``: a fresh one per single-node launch left at 'none'.

    Scripts use it as a unique job id (checkpoint folders, experiment trackers), as
    torchrun's fresh id allows; nodes of a multi-node job must share the id given.
    """
    if spec.rdzv_id == DEFAULT_RDZV_ID and spec.max_nodes == 1:
        return uuid.uuid4().hex
    return spec.rdzv_id


def rendezvous_parameters(
    spec: LaunchSpec, port: int
) -> tuple[RendezvousParameters, str | None, int | None]:
    """Rendezvous parameters, plus master address and port for the static backend."""
    configs: dict[str, Any] = dict(spec.rdzv_configs)
    if "timeout" in configs:  # torch's c10d and etcd-v2 handlers read only join_timeout
        configs.setdefault("join_timeout", configs["timeout"])
    configs.setdefault("timeout", DEFAULT_RDZV_TIMEOUT_S)
    backend, endpoint, run_id = spec.rdzv_backend, spec.rdzv_endpoint, run_id_of(spec)
    master: tuple[str | None, int | None] = (None, None)
    if spec.standalone:
        backend, endpoint, run_id = "c10d", f"127.0.0.1:{port}", str(uuid.uuid4())
        configs["is_host"] = True  # fail on a taken port instead of joining a stranger
    elif backend == "static":
        endpoint = endpoint or f"{spec.master_addr}:{port}"
        host, _, static_port = endpoint.rpartition(":")
        master = (host.strip("[]"), int(static_port))
        configs["rank"] = spec.node_rank
    params = RendezvousParameters(
        backend=backend,
        endpoint=endpoint,
        run_id=run_id,
        min_nodes=spec.min_nodes,
        max_nodes=spec.max_nodes,
        **configs,
    )
    return params, master[0], master[1]
