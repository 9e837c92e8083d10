"""torch's private names icelaunch relies on: the first file to fail after a torch upgrade.

Every entry of ``_torch_internals.PRIVATE`` is pinned here, with the behaviour
we rely on where a name alone says too little; the agent's overrides are pinned
by signature; ``docs/architecture.md`` lists the same table. No worker process.
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.elastic.agent.server.api as torch_agent_api
import torch.distributed.elastic.agent.server.local_elastic_agent as torch_local_agent
import torch.distributed.elastic.multiprocessing.api as torch_mp_api
from packaging.version import Version
from torch.multiprocessing.spawn import ProcessContext

from icelaunch import _torch_internals
from icelaunch._engine import _procs
from icelaunch._engine._agent import Agent

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "icelaunch"
MB = 1 << 20
TORCH = Version(torch.__version__.split("+")[0])
SWAPS_IN_PLACE = pytest.mark.skipif(
    Version("2.13") > TORCH, reason="torch before 2.13 has no UntypedStorage._swap_data_ptr_"
)


def _owner(dotted: str) -> object:
    """The module or class named ``dotted``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _instance_attributes(cls: type) -> set[str]:
    """Names ``cls`` and its bases assign as ``self._x = ...`` (instance state)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names |= set(re.findall(r"self\.(_\w+)\s*(?::[^=\n]+)?=[^=]", source))
    return names


# --- every private name: present where we read it ------------------------------------------


@pytest.mark.parametrize("entry", _torch_internals.PRIVATE, ids=lambda e: f"{e.owner}.{e.name}")
def test_each_private_name_is_still_there(entry: _torch_internals.Private) -> None:
    owner = _owner(entry.owner)
    if isinstance(owner, type):
        defined = hasattr(owner, entry.name) or entry.name in _instance_attributes(owner)
    else:
        defined = hasattr(owner, entry.name)
    if entry.name in ("_swap_data_ptr_", "_new_shared_fd_cpu") and Version("2.13") > TORCH:
        pytest.skip("the chunked move falls back to share_memory_() before torch 2.13")
    assert defined, f"torch no longer has {entry.owner}.{entry.name} ({entry.used_for})"


def test_no_other_module_reads_a_private_torch_name() -> None:
    """The door is the only door: no other module spells one of the names."""
    names = {e.name for e in _torch_internals.PRIVATE}
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "_torch_internals.py":
            continue
        code = "\n".join(
            line.split("#", 1)[0] for line in path.read_text().splitlines()
        )  # comments may mention them
        for name in names:
            if re.search(rf"\.{name}\b(?!`)", code):
                found.append(f"{path.relative_to(SRC)}: .{name}")
    assert not found, "read these through _torch_internals:\n" + "\n".join(found)


def test_the_architecture_page_lists_exactly_these_names() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+)\.(_\w+)` \|", page, re.M))
    pinned = {(e.owner, e.name) for e in _torch_internals.PRIVATE}
    pinned |= {
        ("torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent", name)
        for name in _torch_internals.AGENT_OVERRIDES
    }
    assert listed == pinned


# --- the agent: its overrides and its own names ------------------------------------------


def test_the_agent_overrides_torch_methods_whose_signatures_it_knows() -> None:
    base = torch_local_agent.LocalElasticAgent
    group_only = ["self", "worker_group"]
    expected = {
        "_rendezvous": group_only,
        "_start_workers": group_only,
        "_monitor_workers": group_only,
        "_stop_workers": group_only,  # a torch that adds is_restart breaks the restart path
        "_restart_workers": group_only,
        "_record_worker_events": ["self", "result"],
    }
    for name in _torch_internals.AGENT_OVERRIDES:
        assert hasattr(base, name), f"torch's LocalElasticAgent no longer has {name}"
        assert name in vars(Agent), f"Agent must override {name}"
        if name in expected:
            assert list(inspect.signature(getattr(base, name)).parameters) == expected[name]
    # 2.13 on takes the wait as timeout; 2.11 waits 30 s itself (the one version gate)
    assert list(inspect.signature(base._shutdown).parameters) in (
        ["self", "death_sig", "timeout"],
        ["self", "death_sig"],
    )
    assert _torch_internals.shutdown_takes_timeout() == (Version("2.13") <= TORCH)
    # the 30 s default the stop path avoids: _stop_workers calls _shutdown() bare
    assert "self._shutdown()" in inspect.getsource(base._stop_workers)
    assert "_restart_workers" in vars(torch_agent_api.SimpleElasticAgent)


def test_the_agent_adds_no_name_torch_already_uses() -> None:
    torch_names = {n for c in torch_local_agent.LocalElasticAgent.__mro__ for n in vars(c)}
    torch_names |= _instance_attributes(torch_local_agent.LocalElasticAgent)
    ours = set(vars(Agent)) | set(
        re.findall(r"self\.(_\w+)\s*(?::[^=\n]+)?=[^=]", inspect.getsource(Agent))
    )
    added = {n for n in ours if n.startswith("_") and not n.startswith("__")} - {"_abc_impl"}
    clashes = added & torch_names - set(_torch_internals.AGENT_OVERRIDES)
    assert not clashes, f"Agent would shadow torch's own {sorted(clashes)}"


def test_the_agent_state_it_reads_through_the_door() -> None:
    state = _instance_attributes(torch_local_agent.LocalElasticAgent)
    for name in ("_remaining_restarts", "_worker_group", "_pcontext", "_start_method"):
        assert name in state, f"torch's agent no longer keeps {name}"


# --- the process context: exit statuses, return values, the stop signal ------------------


def test_torch_process_context_keeps_the_process_objects() -> None:
    assert "self._pc = mp.start_processes(" in inspect.getsource(torch_mp_api.MultiprocessContext)
    assert "self.processes = processes" in inspect.getsource(ProcessContext.__init__)
    assert "self.subprocess_handlers" in inspect.getsource(torch_mp_api.SubprocessContext)
    popen = inspect.getsource(torch_mp_api.SubprocessHandler._popen)
    assert 'kwargs["start_new_session"] = True' in popen  # the stop path relies on it
    assert _torch_internals.worker_handles(None) == []


def test_torch_return_value_handshake() -> None:
    """A worker queues its value, then waits for the event before it ends; the agent
    takes the values itself and then sets the event."""
    init = inspect.getsource(torch_mp_api.MultiprocessContext.__init__)
    assert "self._ret_vals = {" in init and "SimpleQueue()" in init
    assert "self._worker_finished_event = mp.get_context(" in init
    wrap = inspect.getsource(torch_mp_api._wrap)
    assert wrap.index("ret_val_.put(ret)") < wrap.index("queue_finished_reading_event.wait()")
    queue = multiprocessing.get_context("fork").SimpleQueue()  # no resource tracker
    try:
        assert _procs.queue_fd(queue) >= 0
    finally:
        queue.close()


def test_torch_terminate_handler_is_looked_up_when_workers_start() -> None:
    """terminate_handler_deferred swaps the module-level handler: torch must still
    install it by name when it starts the workers."""
    assert callable(torch_mp_api._terminate_process_handler)
    start = inspect.getsource(torch_mp_api.PContext.start)
    assert "signal.signal(sig, _terminate_process_handler)" in start
    assert '"TORCHELASTIC_SIGNALS_TO_HANDLE"' in start  # _rundir.SIGNALS_ENV
    before = torch_mp_api._terminate_process_handler
    with _torch_internals.terminate_handler_deferred():
        assert torch_mp_api._terminate_process_handler is not before
    assert torch_mp_api._terminate_process_handler is before


def test_torch_still_records_worker_events_where_we_skip_them() -> None:
    """The agent skips torch's per-worker events for the default "null" handler."""
    from torch.distributed.elastic.agent.server.api import WorkerSpec

    assert WorkerSpec.__dataclass_fields__["event_log_handler"].default == "null"


# --- rendezvous -------------------------------------------------------------------------


def test_static_rendezvous_keeps_its_store_for_restarts() -> None:
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    handler = StaticTCPRendezvous("127.0.0.1", 1, 0, 1, "run", 60)
    assert _torch_internals.static_store(handler) is None
    assert "if not self._store:" in inspect.getsource(StaticTCPRendezvous.next_rendezvous)


def test_torch_env_rendezvous_registry() -> None:
    assert callable(_torch_internals.env_handlers()["env"])


# --- storages: the shared-memory transfer -----------------------------------------------


def test_torch_share_fd_is_idempotent() -> None:
    storage = torch.ones(MB).untyped_storage()
    fd, nbytes = _torch_internals.share_fd(storage)
    assert nbytes == 4 * MB and os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/")
    assert _torch_internals.share_fd(storage)[0] == fd  # no second copy


@SWAPS_IN_PLACE
def test_torch_storage_swap_in_place() -> None:
    """A storage mapping a duplicate of our memfd takes the data pointer of a plain
    one in place, and then gives that memfd as its own, with no copy."""
    tensor = torch.ones(MB)
    plain = tensor.untyped_storage()
    assert _torch_internals.can_swap(type(plain))
    assert plain.resizable() and not torch.from_numpy(np.ones(4)).untyped_storage().resizable()
    memfd = os.memfd_create("test-internals")
    os.pwrite(memfd, tensor.numpy().tobytes(), 0)
    _torch_internals.swap_to_shared(plain, memfd, 4 * MB)
    os.close(memfd)
    address = plain.data_ptr()
    assert plain.is_shared()
    fd, nbytes = _torch_internals.share_fd(plain)
    assert nbytes == 4 * MB and os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:test-")
    assert plain.data_ptr() == address


def test_torch_numa_binding_of_the_current_process_takes_a_gpu_and_options() -> None:
    """The binding numa_binding makes in a worker once its GPUs are narrowed."""
    from torch.numa import binding

    parameters = inspect.signature(binding._maybe_apply_numa_binding_to_current_process).parameters
    assert {n: p.kind for n, p in parameters.items()} == {
        "gpu_index": inspect.Parameter.KEYWORD_ONLY,
        "numa_options": inspect.Parameter.KEYWORD_ONLY,
    }
    options = binding.NumaOptions(affinity_mode=binding.AffinityMode("node"))
    assert options.should_fall_back_if_binding_fails is False  # a failed binding raises
