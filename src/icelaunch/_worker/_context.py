"""What a worker knows about itself, and the process group it joins.

:class:`WorkerContext` is rebuilt in each worker from the spec and torch's
variables; :func:`current` returns it (launched functions set it at start,
scripts build it on first use from ``ICELAUNCH_SPEC``).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from icelaunch import _placement, _rundir
from icelaunch._errors import NotInWorkerError
from icelaunch._loopback import LOOPBACK, loopback_store
from icelaunch._rundir import Identity
from icelaunch._spec import LaunchSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class WorkerContext:
    """What a worker knows about itself; rebuilt from its environment and the spec.

    Pure data (the device is kept as its name, so the object pickles and builds
    without torch); ``assigned_device`` gives it as a ``torch.device``, as
    ``launcher.assigned_device`` does.
    """

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    group_rank: int
    group_world_size: int
    role_rank: int
    role_name: str
    role_world_size: int
    master_addr: str
    master_port: int
    restart_count: int
    max_restarts: int
    rdzv_id: str
    device_name: str
    dist_backend: str
    collective_timeout: float | None = None

    @property
    def assigned_device(self) -> torch.device:
        """This worker's device, e.g. ``torch.device('cuda:1')`` (``device_name`` as a string)."""
        import torch

        return torch.device(self.device_name)

    def stop_requested(self) -> bool:
        """Whether a stop was asked for: True on every rank at the same call.

        Once the launcher is asked to stop (SIGTERM, Ctrl-C, ...: the ranks then
        have ``shutdown_timeout`` seconds) or passes on a preemption notice
        (SIGUSR1, SIGUSR2), or a rank itself gets one of those signals. Call it
        once per step on every rank; it costs one all_reduce of one integer (gloo).
        From the first call on, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 (where at
        their default action) no longer end this rank: it decides when to exit::

            for step in range(start, steps):
                train_step(step)
                if icelaunch.current().stop_requested():
                    save_checkpoint(step)
                    break
        """
        from icelaunch._worker import _stopping

        return _stopping.requested(self)

    @classmethod
    def from_env(
        cls, spec: LaunchSpec, env: Mapping[str, str], who: Identity | None = None
    ) -> WorkerContext:
        """Read the variables torch's elastic agent gives every worker (``who``: the
        identity the bootstrap read already)."""
        who = who or _identity or Identity.from_env(env, strict=True)
        if who is None:
            raise KeyError("LOCAL_RANK")
        return cls(
            rank=who.rank,
            local_rank=who.local_rank,
            world_size=int(env["WORLD_SIZE"]),
            local_world_size=int(env["LOCAL_WORLD_SIZE"]),
            group_rank=who.group_rank,
            group_world_size=int(env["GROUP_WORLD_SIZE"]),
            role_rank=int(env["ROLE_RANK"]),
            role_name=who.role_name,
            role_world_size=int(env["ROLE_WORLD_SIZE"]),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env["MASTER_PORT"]),
            restart_count=who.attempt,
            max_restarts=int(env["TORCHELASTIC_MAX_RESTARTS"]),
            rdzv_id=env["TORCHELASTIC_RUN_ID"],
            device_name=_placement.device_seen(spec, who.local_rank),
            dist_backend=spec.dist_backend,
            collective_timeout=spec.collective_timeout,
        )


_current: WorkerContext | None = None
_identity: Identity | None = None  # read by the bootstrap of a script's worker


def current() -> WorkerContext:
    """The context of the worker this code runs in (a launched function or script).

    Raises:
        NotInWorkerError: called outside a worker process.
    """
    global _current
    if _current is None and _rundir.SPEC_ENV in os.environ and "LOCAL_RANK" in os.environ:
        from icelaunch._spec import spec_from_json

        spec = spec_from_json(os.environ[_rundir.SPEC_ENV])
        _current = WorkerContext.from_env(spec, os.environ)
    if _current is None:
        raise NotInWorkerError(
            "this property exists only inside a worker process started by icelaunch: "
            "read it in the function you launch, e.g. `def worker(launcher): launcher.rank`, "
            "or in a script run by the `icelaunch` command, e.g. `icelaunch.current().rank`"
        )
    return _current


def init_process_group() -> WorkerContext:
    """Join the job's default process group as a launched function does; return the context.

    For scripts run by the ``icelaunch`` command: selects this worker's CUDA
    device (if it has one) and initialises ``torch.distributed`` with the job's
    backend, rank, world size and store. The group is destroyed when the
    process exits. Does nothing if a default group exists already (a launched
    function has one).

    Raises:
        NotInWorkerError: called outside a worker process.
    """
    import torch.distributed as dist

    ctx = current()
    if not dist.is_initialized():
        join_process_group(ctx)
        atexit.register(destroy_process_group)
    return ctx


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def join_process_group(ctx: WorkerContext) -> None:
    """Select the worker's device and join the job's default process group."""
    import torch
    import torch.distributed as dist

    device = ctx.assigned_device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    options: dict[str, Any] = {"device_id": device} if ctx.dist_backend == "nccl" else {}
    if ctx.collective_timeout is not None:
        options["timeout"] = datetime.timedelta(seconds=ctx.collective_timeout)
    dist.init_process_group(
        backend=ctx.dist_backend,
        store=_attempt_store(ctx),
        rank=ctx.rank,
        world_size=ctx.world_size,
        **options,
    )
    _wait_for_every_rank(ctx)


def _wait_for_every_rank(ctx: WorkerContext) -> None:
    """Return once every rank has joined the group, not just this one.

    gloo connects the ranks pairwise inside ``init_process_group``, and a rank
    leaves it as soon as its own side of each pair is up: a fast rank could run
    the user's code and end (failing, or returning) while a slower peer still
    waits for its half of the connection, which then fails with "Connection
    closed by peer" before any user code ran. One barrier, a message from every
    rank (a few milliseconds), rules that out.
    """
    import torch.distributed as dist

    if ctx.world_size == 1:
        return
    if ctx.dist_backend == "nccl":
        dist.barrier(device_ids=[ctx.assigned_device.index or 0])
    else:
        dist.barrier()


def _attempt_store(ctx: WorkerContext) -> Any:
    """The job's store, under a prefix of its own for each restart.

    torch's ``env://`` shares keys across restarts of a static rendezvous, so a
    restarted group would read the previous attempt's (dead) peer addresses.
    """
    from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

    agent_hosts = _rundir.uses_agent_store(os.environ)
    if not agent_hosts and ctx.group_world_size == 1:  # one node: listen on loopback only
        store = _worker_store(ctx.rank, ctx.master_port, ctx.world_size)
    else:
        store = TCPStore(
            ctx.master_addr,
            ctx.master_port,
            world_size=ctx.world_size,
            is_master=not agent_hosts and ctx.rank == 0,
            wait_for_workers=False,
        )
    # A store hosted by worker rank 0 is new for each rendezvous round (c10d, etcd-v2)
    # and nodes may count restarts differently (a newcomer has 0): no attempt prefix.
    attempt = f"/attempt_{ctx.restart_count}" if agent_hosts else ""
    return PrefixStore(f"icelaunch/{ctx.rdzv_id}{attempt}", store)


def set_current(ctx: WorkerContext) -> None:
    """Make ``ctx`` what :func:`current` returns in this process (a launched function)."""
    global _current
    _current = ctx


def set_identity(who: Identity) -> None:
    """The identity this process's bootstrap read (a script's worker): :func:`current`
    builds the context from it instead of reading it again."""
    global _identity
    _identity = who


def _worker_store(rank: int, port: int, world_size: int) -> Any:
    """The store of a one-node round hosted by worker rank 0, on loopback."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]

    if rank == 0:
        return loopback_store(LOOPBACK, port)
    return TCPStore(LOOPBACK, port, world_size=world_size, is_master=False)
