"""Placement as data: what each rank sees, from a spec frozen with a faked GPU count."""

from __future__ import annotations

import logging

import pytest

from icelaunch import ElasticLauncher, _devices, _placement, _spec
from icelaunch._placement import _threads
from icelaunch._spec import LaunchSpec, spec_from_json, spec_to_json


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Pretend this machine has 8 CUDA devices (hardware we do not have)."""
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 8)
    return monkeypatch


def frozen(devices: str, **kwargs: object) -> LaunchSpec:
    return ElasticLauncher(devices, dist_backend="gloo", **kwargs).freeze().spec


def seen(spec: LaunchSpec, env: dict[str, str] | None = None) -> list[tuple[str | None, ...]]:
    """(CUDA_VISIBLE_DEVICES, LOCAL_RANK, device) of every local rank."""
    plans = [_placement.plan(spec, r, env or {}) for r in range(spec.nproc_per_node)]
    return [(p.visible, p.local_rank_env, p.device) for p in plans]


# --- which specs narrow, and to what ------------------------------------------------------

NARROWING = [
    ("cuda:*", None, [(None, str(r), f"cuda:{r}") for r in range(8)]),
    ("cuda", None, [(None, "0", "cuda:0")]),
    ("auto", None, [(None, "0", "cuda:0")]),
    ("cuda:0-7", None, [(None, str(r), f"cuda:{r}") for r in range(8)]),
    ("cuda:4-7", (4, 5, 6, 7), [("4,5,6,7", str(r), f"cuda:{r}") for r in range(4)]),
    ("cuda:1,3", (1, 3), [("1,3", "0", "cuda:0"), ("1,3", "1", "cuda:1")]),
    ("cuda:3,1", (3, 1), [("3,1", "0", "cuda:0"), ("3,1", "1", "cuda:1")]),
    ("cuda:7", (7,), [("7", "0", "cuda:0")]),
    ("cuda:0", (0,), [("0", "0", "cuda:0")]),
    ("cuda:0,0", (0,), [("0", "0", "cuda:0"), ("0", "1", "cuda:0")]),
    (
        "cuda:2,5,2",
        (2, 5),
        [("2,5", "0", "cuda:0"), ("2,5", "1", "cuda:1"), ("2,5", "2", "cuda:0")],
    ),
    ("cpu:0-1", None, [(None, "0", "cpu"), (None, "1", "cpu")]),
]


@pytest.mark.parametrize(("devices", "visible", "ranks"), NARROWING)
def test_a_cuda_list_that_is_not_every_gpu_in_order_narrows_per_node(
    gpus: pytest.MonkeyPatch,
    devices: str,
    visible: tuple[int, ...] | None,
    ranks: list[tuple[str | None, ...]],
) -> None:
    spec = frozen(devices)
    assert spec.visible_devices == visible
    assert seen(spec)[: len(ranks)] == ranks


def test_the_callers_visible_devices_are_composed(gpus: pytest.MonkeyPatch) -> None:
    gpus.setattr(_devices, "cuda_device_count", lambda: 4)
    spec = frozen("cuda:1,3")
    caller = {"CUDA_VISIBLE_DEVICES": "2,3,6,7"}
    assert seen(spec, caller) == [("3,7", "0", "cuda:0"), ("3,7", "1", "cuda:1")]
    uuids = {"CUDA_VISIBLE_DEVICES": "GPU-a, GPU-b,GPU-c,GPU-d"}
    assert seen(spec, uuids)[0][0] == "GPU-b,GPU-d"


def test_virtual_local_rank_narrows_per_rank(gpus: pytest.MonkeyPatch) -> None:
    spec = frozen("cuda:1,3", virtual_local_rank=True)
    assert seen(spec) == [("1", "0", "cuda:0"), ("3", "0", "cuda:0")]
    assert seen(spec, {"CUDA_VISIBLE_DEVICES": "2,3,6,7"})[1][0] == "7"
    every = frozen("cuda:*", virtual_local_rank=True)  # no list: still one GPU per rank
    assert seen(every)[5] == ("5", "0", "cuda:0")
    cpus = frozen("cpu:0-1", virtual_local_rank=True)
    assert seen(cpus) == [(None, "0", "cpu"), (None, "0", "cpu")]


def test_a_gpu_the_callers_list_hides_is_an_error_before_any_worker(
    gpus: pytest.MonkeyPatch,
) -> None:
    spec = frozen("cuda:2,5")
    with pytest.raises(ValueError, match=r"GPU 5 is not among the 3 that CUDA_VISIBLE_DEVICES="):
        _placement.check_launch(spec, {"CUDA_VISIBLE_DEVICES": "0,1,2"})


def test_the_spec_keeps_its_placement_through_json(gpus: pytest.MonkeyPatch) -> None:
    spec = frozen("cuda:3,1", virtual_local_rank=True)
    again = spec_from_json(spec_to_json(spec))
    assert again == spec and again.visible_devices == (3, 1)


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "omp", "expected"),
    [({}, 1, "1"), ({}, 3, "3"), ({"OMP_NUM_THREADS": "2"}, 1, None)],
)
def test_omp_threads_unless_the_caller_set_them(
    env: dict[str, str], omp: int, expected: str | None
) -> None:
    spec = frozen("cpu:0-3", omp_num_threads=omp)
    assert {_placement.plan(spec, r, env).threads for r in range(4)} == {expected}


def test_torchruns_threads_warning_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_threads, "_told", False)
    several = frozen("cpu:0-3")
    assert _placement.threads_notice(frozen("cpu"), {}) is None
    assert _placement.threads_notice(several, {"OMP_NUM_THREADS": "4"}) is None
    assert _placement.threads_notice(frozen("cpu:0-3", omp_num_threads=2), {}) is None
    with caplog.at_level(logging.WARNING, logger="icelaunch"):
        _placement.check_launch(several, {})
        _placement.check_launch(several, {})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "OMP_NUM_THREADS is not set: each of the 4 workers on this node runs with "
        "OMP_NUM_THREADS=1 (omp_num_threads=1), so that they do not overload the machine; "
        "tune it for your program with omp_num_threads=N or by setting OMP_NUM_THREADS"
    ]


# --- NUMA binding ----------------------------------------------------------------------------


@pytest.fixture
def numactl(gpus: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    gpus.setattr(_spec.shutil, "which", lambda name: f"/usr/bin/{name}")
    return gpus


@pytest.mark.parametrize("strategy", _devices.numa_strategies())
def test_torchs_numa_strategies_are_accepted_for_gpus(
    numactl: pytest.MonkeyPatch, strategy: str
) -> None:
    spec = frozen("cuda:4-7", numa_binding=strategy)
    plans = [_placement.plan(spec, r, {}) for r in range(4)]
    assert [(p.numa_binding, p.numa_gpu) for p in plans] == [(strategy, r) for r in range(4)]
    if strategy in ("node", "socket"):
        virtual = frozen("cuda:4-7", numa_binding=strategy, virtual_local_rank=True)
        assert _placement.plan(virtual, 3, {}).numa_gpu == 0  # its GPU, as it sees it


@pytest.mark.parametrize("strategy", ["exclusive", "core-complex"])
def test_shares_of_a_numa_node_need_the_node_gpus_in_view(
    numactl: pytest.MonkeyPatch, strategy: str
) -> None:
    with pytest.raises(ValueError, match=r"with virtual_local_rank=True: .*shares would overlap"):
        frozen("cuda:4-7", numa_binding=strategy, virtual_local_rank=True)


def test_the_installed_torch_has_the_four_strategies() -> None:
    assert set(_devices.numa_strategies()) >= {"node", "socket", "exclusive"}


@pytest.mark.parametrize(
    ("devices", "value", "message"),
    [
        (
            "cuda:0-1",
            "nodes",
            r"invalid numa_binding 'nodes': the installed torch 2\.\S+ offers "
            r"one of node, socket.*e\.g\. numa_binding='node'",
        ),
        ("cuda:0-1", 1, r"numa_binding must be str, not 1; e\.g\. numa_binding='node'"),
        (
            "cpu:0-3",
            "node",
            r"invalid numa_binding 'node' for devices 'cpu:0-3': .*CPU workers "
            r"have no GPU.*e\.g\. devices='cuda:0-3', numa_binding='node'",
        ),
    ],
)
def test_bad_numa_binding_is_refused_at_freeze(
    numactl: pytest.MonkeyPatch, devices: str, value: object, message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        frozen(devices, numa_binding=value)


def test_a_strategy_the_installed_torch_lacks_is_refused(numactl: pytest.MonkeyPatch) -> None:
    numactl.setattr(_devices, "numa_strategies", lambda: ("node", "socket", "exclusive"))
    with pytest.raises(
        ValueError,
        match=r"'core-complex': the installed torch .* offers one of "
        r"node, socket, exclusive",
    ):
        frozen("cuda:0-1", numa_binding="core-complex")
    numactl.setattr(_devices, "numa_strategies", lambda: ())
    with pytest.raises(ValueError, match=r"offers None: it has no NUMA binding"):
        frozen("cuda:0-1", numa_binding="node")


def test_numa_binding_without_numactl_is_refused(gpus: pytest.MonkeyPatch) -> None:
    gpus.setattr(_spec.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the numactl command, which is not on PATH"):
        frozen("cuda:0-1", numa_binding="node")


def test_no_binding_by_default(gpus: pytest.MonkeyPatch) -> None:
    plan = _placement.plan(frozen("cuda:4-7"), 0, {})
    assert (plan.numa_binding, plan.numa_gpu) == (None, None)


# --- CUDA results ----------------------------------------------------------------------------


class _Storage:
    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)


def test_cuda_results_are_tagged_with_the_launchers_gpu_numbers(
    gpus: pytest.MonkeyPatch,
) -> None:
    """A rank of ``cuda:3,1`` sees GPU 1 as cuda:1: its tensor goes back as the launcher's
    cuda:1; with virtual_local_rank its cuda:0 is GPU 1 too. Outside the block, and for
    other devices, torch's own taggers decide."""
    import torch.serialization

    from icelaunch._placement import _results

    spec = frozen("cuda:3,1")
    assert _results.launcher_tag(_Storage("cuda:0")) is None
    with _placement.in_launcher_numbering(spec, 1):
        assert _results.launcher_tag(_Storage("cuda:0")) == "cuda:3"
        assert _results.launcher_tag(_Storage("cuda:1")) == "cuda:1"
        assert _results.launcher_tag(_Storage("cpu")) is None
    with _placement.in_launcher_numbering(frozen("cuda:3,1", virtual_local_rank=True), 1):
        assert _results.launcher_tag(_Storage("cuda:0")) == "cuda:1"
    assert _results.launcher_tag(_Storage("cuda:0")) is None
    with _placement.in_launcher_numbering(spec, 0):  # torch's own CPU tag still applies
        assert torch.serialization.location_tag(torch.ones(1).untyped_storage()) == "cpu"
    with _placement.in_launcher_numbering(frozen("cpu:0-1"), 0):
        assert _results.launcher_tag(_Storage("cuda:0")) is None


def test_narrowing_after_cuda_started_is_a_clear_error(gpus: pytest.MonkeyPatch) -> None:
    """A worker whose main module touched CUDA at import can no longer be narrowed."""
    from icelaunch._placement import _apply

    gpus.setattr(_apply, "cuda_started", lambda: True)
    gpus.setattr(_apply, "size_thread_pool", lambda env: None)  # not this process's threads
    env: dict[str, str] = {}
    with pytest.raises(RuntimeError, match=r"CUDA was initialised in this worker before .*'4,5'"):
        _placement.place(frozen("cuda:4,5"), 0, env)
    assert env == {}
    _placement.place(frozen("cpu:0-1"), 1, env)  # nothing to narrow: fine
    assert env == {"LOCAL_RANK": "1", "OMP_NUM_THREADS": "1"}


def test_place_sets_the_ranks_variables(gpus: pytest.MonkeyPatch) -> None:
    from icelaunch._placement import _apply

    gpus.setattr(_apply, "size_thread_pool", lambda env: None)  # not this process's threads
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "OMP_NUM_THREADS": "2"}
    placement = _placement.place(frozen("cuda:6,7", virtual_local_rank=True), 1, env)
    assert env == {"CUDA_VISIBLE_DEVICES": "7", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "2"}
    assert placement.device == "cuda:0"
