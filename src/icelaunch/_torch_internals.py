"""The one door to torch's private names: every read or override goes through here.

torch's public API does not say when a worker returned its value, which process
object knows a worker's true exit status, or how to swap a storage's memory in
place; icelaunch needs all three. Each private name it uses is listed in
:data:`PRIVATE` and reached through a function of this module;
``tests/unit/test_torch_internals.py`` pins every one of them and is the first
file to fail after a torch upgrade. ``docs/architecture.md`` carries the same
table. The agent's method overrides (:data:`AGENT_OVERRIDES`) live in
``_engine/_agent.py``, a subclass of torch's agent; their signatures are pinned
by the same test.

A leaf: it imports no other icelaunch module, and torch only inside functions,
so the engine, the worker side and the transfer can all use it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NamedTuple


class Private(NamedTuple):
    """One private torch name icelaunch relies on, and why."""

    owner: str
    name: str
    used_for: str


PRIVATE: tuple[Private, ...] = (
    Private(
        "torch.distributed.elastic.multiprocessing.api",
        "_terminate_process_handler",
        "held back while workers start (a signal mid-start would orphan them)",
    ),
    Private(
        "torch.distributed.elastic.multiprocessing.api.MultiprocessContext",
        "_pc",
        "the worker Process objects: their true exit statuses",
    ),
    Private(
        "torch.distributed.elastic.multiprocessing.api.MultiprocessContext",
        "_ret_vals",
        "each worker's return queue: the call returns once every value is in",
    ),
    Private(
        "torch.distributed.elastic.multiprocessing.api.MultiprocessContext",
        "_worker_finished_event",
        "releases the workers after their values were taken",
    ),
    Private(
        "torch.distributed.elastic.agent.server.api.SimpleElasticAgent",
        "_remaining_restarts",
        "the attempt number and the restarts used",
    ),
    Private(
        "torch.distributed.elastic.agent.server.api.SimpleElasticAgent",
        "_worker_group",
        "the group being stopped (stacks, failures)",
    ),
    Private(
        "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent",
        "_pcontext",
        "the process context of the running workers",
    ),
    Private(
        "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent",
        "_start_method",
        "waits for the warm fork server before starting workers",
    ),
    Private(
        "torch.distributed.elastic.rendezvous.static_tcp_rendezvous.StaticTCPRendezvous",
        "_store",
        "a static rendezvous store we create (loopback, Ctrl-C answered)",
    ),
    Private(
        "torch.distributed.rendezvous",
        "_rendezvous_handlers",
        "env:// gets a per-attempt prefix after a restart (process_group=False)",
    ),
    Private(
        "torch.UntypedStorage",
        "_share_fd_cpu_",
        "the descriptor of a shared storage (arguments through shared memory)",
    ),
    Private(
        "torch.UntypedStorage",
        "_new_shared_fd_cpu",
        "maps a memfd we wrote as a storage (the chunked move)",
    ),
    Private(
        "torch.UntypedStorage",
        "_swap_data_ptr_",
        "moves a tensor's storage to shared memory in place (the chunked move)",
    ),
    Private(
        "torch.numa.binding",
        "_maybe_apply_numa_binding_to_current_process",
        "binds a worker to the CPUs near its GPU (numa_binding), after its GPUs are narrowed",
    ),
)

#: torch agent methods that ``_engine/_agent.Agent`` overrides
AGENT_OVERRIDES = (
    "_rendezvous",
    "_start_workers",
    "_monitor_workers",
    "_stop_workers",
    "_shutdown",
    "_restart_workers",
    "_record_worker_events",
)


# --- torch.distributed.elastic.multiprocessing: the process context ------------------------


@contextlib.contextmanager
def terminate_handler_deferred() -> Iterator[list[int]]:
    """Hold back torch's stop-signal exception while the block (starting workers) runs.

    torch installs its handler, which raises ``SignalException``, just before it
    starts the workers; raised half-way, the workers already started would be
    known to nobody. Inside the block a signal is only noted, in the list the
    block gets; afterwards torch's own handler is back where the block left the
    noting one, and the caller acts on what was noted.
    """
    import torch.distributed.elastic.multiprocessing.api as torch_mp_api

    original = torch_mp_api._terminate_process_handler
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    torch_mp_api._terminate_process_handler = note  # type: ignore[assignment]
    try:
        yield noted
    finally:
        torch_mp_api._terminate_process_handler = original
        for sig in signal.valid_signals():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(sig) is note:
                    signal.signal(sig, original)


def worker_handles(pcontext: Any) -> list[tuple[int, int, Any]]:
    """(local rank, pid, process object) of torch's ``PContext``: ``Process`` objects for
    functions (``MultiprocessContext._pc.processes``), ``Popen`` objects for commands
    (``SubprocessContext.subprocess_handlers[r].proc``); empty before any started."""
    if pcontext is None:
        return []
    pc = getattr(pcontext, "_pc", None)  # MultiprocessContext
    if pc is not None:
        return [(r, int(p.pid), p) for r, p in enumerate(pc.processes)]
    handlers = getattr(pcontext, "subprocess_handlers", None) or {}  # SubprocessContext
    return [(r, int(h.proc.pid), h.proc) for r, h in sorted(handlers.items())]


def return_queues(pcontext: Any) -> dict[int, Any]:
    """Local rank -> the queue on which torch's ``_wrap`` puts that worker's return
    value (``MultiprocessContext._ret_vals``); empty for commands."""
    return dict(getattr(pcontext, "_ret_vals", None) or {})


def finished_event(pcontext: Any) -> Any:
    """The event torch's ``_wrap`` waits on after queuing its value (None for commands)."""
    return getattr(pcontext, "_worker_finished_event", None)


def error_file(pcontext: Any, local_rank: int) -> str:
    """The torch error file of ``local_rank`` (``""`` if torch gave none)."""
    files = getattr(pcontext, "error_files", None) or {}
    return str(files.get(local_rank, ""))


# --- torch.distributed.elastic.agent: the agent's own state --------------------------------


def remaining_restarts(agent: Any) -> int:
    """``SimpleElasticAgent._remaining_restarts``."""
    return int(agent._remaining_restarts)


def worker_group(agent: Any) -> Any:
    """``SimpleElasticAgent._worker_group``."""
    return agent._worker_group


def process_context(agent: Any) -> Any:
    """``LocalElasticAgent._pcontext`` (None before workers started)."""
    return getattr(agent, "_pcontext", None)


def start_method(agent: Any) -> str:
    """``LocalElasticAgent._start_method``."""
    return str(agent._start_method)


@functools.cache
def shutdown_takes_timeout() -> bool:
    """Whether torch's ``LocalElasticAgent._shutdown`` takes ``timeout`` (2.13 on;
    2.11 has ``death_sig`` only). The one torch version gate of the stop path."""
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    return "timeout" in inspect.signature(LocalElasticAgent._shutdown).parameters


def close_process_context(shutdown: Callable[..., None], death_sig: signal.Signals) -> None:
    """Call torch's ``_shutdown`` (bound, of the base class) without its own wait."""
    if shutdown_takes_timeout():
        shutdown(death_sig, timeout=0)
    else:
        shutdown(death_sig)  # torch 2.11: no wait left anyway, the workers are gone


# --- rendezvous ------------------------------------------------------------------------


def static_store(handler: Any) -> Any:
    """``StaticTCPRendezvous._store`` (None before the first round)."""
    return handler._store


def set_static_store(handler: Any, store: Any) -> None:
    """Give a ``StaticTCPRendezvous`` a store we created."""
    handler._store = store


def env_handlers() -> dict[str, Callable[..., Iterator[Any]]]:
    """torch's registry of ``init_method`` handlers (the module, not the function
    ``torch.distributed.rendezvous`` that shadows its name)."""
    import importlib

    module = importlib.import_module("torch.distributed.rendezvous")
    handlers: dict[str, Callable[..., Iterator[Any]]] = module._rendezvous_handlers
    return handlers


# --- storages ----------------------------------------------------------------------------


def share_fd(storage: Any) -> tuple[int, int]:
    """(descriptor, bytes) of a CPU storage in shared memory, moving it there first if
    it is not (``UntypedStorage._share_fd_cpu_``: idempotent)."""
    fd, nbytes = storage._share_fd_cpu_()
    return int(fd), int(nbytes)


def can_swap(kind: type) -> bool:
    """Whether this torch can map a memfd as a storage and swap it in place (2.13 on)."""
    return hasattr(kind, "_swap_data_ptr_") and hasattr(kind, "_new_shared_fd_cpu")


def swap_to_shared(storage: Any, fd: int, nbytes: int) -> None:
    """Map ``fd`` (a duplicate of it) as a storage and swap ``storage``'s data onto it.

    The storage's old memory is freed when this returns.
    """
    shared = type(storage)._new_shared_fd_cpu(fd, nbytes)
    storage._swap_data_ptr_(shared)


def swap_storage(storage: Any, other: Any) -> None:
    """Give ``storage`` the data of ``other`` (of the same size), in place: every tensor
    viewing ``storage`` follows; its old memory is freed with ``other``."""
    storage._swap_data_ptr_(other)


# --- NUMA binding ------------------------------------------------------------------------


def bind_to_gpu_cpus(gpu_index: int, strategy: str) -> None:
    """Bind every thread of this process to the CPUs torch's NUMA ``strategy`` picks for
    GPU ``gpu_index`` (as this process sees it), as torchrun's ``--numa-binding`` does in
    a worker; torch's own call in its worker wrapper would use the local rank before
    icelaunch narrows ``CUDA_VISIBLE_DEVICES``.
    """
    from torch.numa import binding

    options = binding.NumaOptions(affinity_mode=binding.AffinityMode(strategy))
    binding._maybe_apply_numa_binding_to_current_process(gpu_index=gpu_index, numa_options=options)
