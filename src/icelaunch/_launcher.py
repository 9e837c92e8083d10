"""ElasticLauncher: the seed's configurable launcher."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from icelaunch import _cluster, _preflight, _worker
from icelaunch._config import Configurable
from icelaunch._rundir import PREFIX_TEMPLATE
from icelaunch._spec import LaunchSpec, build_spec

if TYPE_CHECKING:
    import torch


def _worker_property(name: str) -> property:
    def get(self: ElasticLauncher) -> Any:
        return getattr(_worker.current(), name)

    get.__doc__ = f"``{name}`` of the current worker (only inside a worker)."
    return property(get)


class ElasticLauncher(Configurable):
    """A configurable launcher on torch.distributed.elastic (the engine of ``torchrun``).

    Example::

        def worker(launcher):
            print("rank", launcher.rank, "device", launcher.assigned_device)

        if __name__ == "__main__":
            launcher = ElasticLauncher("cpu:0-3").freeze()
            launcher(worker, launcher)
    """

    _spec: LaunchSpec

    def __freeze__(
        self,
        devices: str = "auto",
        nnodes: str = "1:1",
        dist_backend: str = "auto",
        rdzv_id: str = "none",
        rdzv_endpoint: str = "",
        rdzv_backend: str = "static",
        rdzv_configs: str = "",
        standalone: bool = False,
        max_restarts: int = 0,
        monitor_interval: float = 5,
        start_method: str = "spawn",
        redirects: str = "0",
        tee: str = "0",
        log_dir: str | None = None,
        role: str = "default",
        node_rank: int = 0,
        master_addr: str = "127.0.0.1",
        master_port: int | None = None,
        omp_num_threads: int = 1,
        *,
        warm_start: bool = True,
        local_ranks_filter: str | Sequence[int] | None = None,
        log_line_prefix_template: str = PREFIX_TEMPLATE,
        timeout: float | None = None,
        hang_timeout: float | None = None,
        collective_timeout: float | None = None,
        process_group: bool = True,
        shutdown_timeout: float = 30.0,
        numa_binding: str | None = None,
        virtual_local_rank: bool = False,
        report: str | None = None,
        slow_rank: float | None = 30.0,
    ) -> None:
        """Validate every argument into a :class:`LaunchSpec`; see the README's table.

        The seed's parameters come first, in its order, with its defaults. Then:

        Args:
            warm_start: with ``start_method="spawn"`` (or ``"forkserver"``), start
                workers from a warm fork server that has torch imported and never
                ran your program's code or touched CUDA: spawn's guarantees,
                without one interpreter start and torch import per worker.
                ``False`` starts every worker as a fresh interpreter.
            local_ranks_filter: the local ranks whose output reaches the console,
                e.g. ``"0"`` or ``"0,2"`` (torchrun's ``--local-ranks-filter``);
                None: all. The others still write their log files (``log_dir``).
            log_line_prefix_template: the prefix of every console line (and of every
                ``\r`` redraw): ``${rank}``, ``${local_rank}``, ``${role_name}``,
                ``${group_rank}`` (or ``${node_rank}``), ``${hostname}``; ``""`` for none.
            timeout: seconds for the whole call; when they pass, the ranks' stacks
                are taken, the workers stopped and ``LaunchTimeoutError`` raised.
            hang_timeout: seconds in which no rank computes (CPU time of its
                threads or the processes it started), wakes up from a wait, or
                changes its Python stack, after which the job is judged hung and
                handled as for ``timeout``. A rank blocked in a collective, a lock,
                a sleep or I/O is hung; one that computes is not, a busy loop in
                pure Python included (``timeout`` bounds it). The rule in full:
                docs/failures.md, "Time limits".
            collective_timeout: seconds a collective may wait for its peers before it
                raises in the ranks (``init_process_group(timeout=...)``, gloo and
                nccl); None keeps torch's default (10 min for nccl, 30 min for gloo).
            process_group: initialise torch.distributed's default process group in
                every worker before calling the function. ``False`` leaves it to the
                function (``dist.init_process_group("gloo")``, Ignite's
                ``idist.Parallel``, ...), with the ``env://`` variables torchrun gives.
            shutdown_timeout: seconds the ranks get to exit on their own when the
                launcher is asked to stop (SIGTERM, Ctrl-C, SIGHUP, ...: a scheduler's
                preemption) before they are killed; the call ends as soon as the last
                rank is gone. Another stop signal ends the grace at once. Stops
                caused by a failing rank or a time limit do not wait (3 s).
            numa_binding: bind each rank (all its threads) to the CPUs near its GPU with
                one of torch's strategies (torchrun's ``--numa-binding``): ``node``,
                ``socket``, ``exclusive``, ``core-complex`` (as the installed torch
                offers them; needs numactl). None: a rank may run on every CPU the
                launcher may.
            virtual_local_rank: every rank sees only its own GPU, as ``cuda:0``, and
                ``LOCAL_RANK=0`` (torchrun's ``--virtual-local-rank``). False: the ranks
                of a node see the node's GPUs and ``LOCAL_RANK`` is their index.
            report: write a run report (JSON, docs/watching.md) to this file when the
                launch ends, however it ends: parameters, events, every rank's start,
                end, memory and CPU time, waits, slow-rank findings, stacks at a stop,
                the failure. Written atomically; None: no report.
            slow_rank: name the rank that holds the others back, with no code change:
                each rank counts how often its main thread waits in a collective (10
                looks a second, no signal), and a rank that waits far less than all
                the others over this many seconds is named in a WARNING and the
                report. None turns the ranks' sampling off.

        Raises:
            ValueError: an argument breaks its rule (the message quotes it).
            TypeError: an argument has the wrong type.
        """
        arguments = dict(locals())
        del arguments["self"]
        arguments = _cluster.fill(arguments, given=self._cfg_args, env=os.environ)
        self._spec = build_spec(arguments)

    @property
    def spec(self) -> LaunchSpec:
        """The validated launch description."""
        return self._spec

    def __call__(self, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
        """Run ``fn(*args)`` in every worker; return ``{global_rank: value}`` for this node.

        Raises:
            WorkerFailedError: a worker failed and no restart was left.
            RuntimeError: ``start_method="fork"`` after this process initialised CUDA.
        """
        from icelaunch import _engine

        with _preflight.prepared(self._spec):  # fork after CUDA; `python -` scripts
            return _engine.launch(self._spec, fn, args)

    @property
    def devices(self) -> list[torch.device]:
        """One device per local worker."""
        import torch

        return [torch.device(d) for d in self._spec.devices]

    @property
    def dist_backend(self) -> str:
        """The process-group backend (``auto`` resolved)."""
        return self._spec.dist_backend

    @property
    def assigned_device(self) -> torch.device:
        """The device of the current worker (only inside a worker)."""
        import torch

        return torch.device(_worker.current().assigned_device)

    rank = _worker_property("rank")
    local_rank = _worker_property("local_rank")
    world_size = _worker_property("world_size")
    local_world_size = _worker_property("local_world_size")
    group_rank = _worker_property("group_rank")
    group_world_size = _worker_property("group_world_size")
    role_rank = _worker_property("role_rank")
    role_name = _worker_property("role_name")
    role_world_size = _worker_property("role_world_size")
    master_addr = _worker_property("master_addr")
    master_port = _worker_property("master_port")
    restart_count = _worker_property("restart_count")
    max_restarts = _worker_property("max_restarts")
    rdzv_id = _worker_property("rdzv_id")
