"""Freezing validates every seed argument; bad input is a ValueError/TypeError quoting it."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import pytest

from icelaunch import ElasticLauncher, NotFrozenError, NotInWorkerError
from icelaunch._spec import LaunchSpec

SEED_DEFAULTS = {
    "devices": "auto",
    "nnodes": "1:1",
    "dist_backend": "auto",
    "rdzv_id": "none",
    "rdzv_endpoint": "",
    "rdzv_backend": "static",
    "rdzv_configs": "",
    "standalone": False,
    "max_restarts": 0,
    "monitor_interval": 5,
    "start_method": "spawn",
    "redirects": "0",
    "tee": "0",
    "log_dir": None,
    "role": "default",
    "node_rank": 0,
    "master_addr": "127.0.0.1",
    "master_port": None,
    "omp_num_threads": 1,
}


def test_freeze_signature_is_the_seeds() -> None:
    params = list(inspect.signature(ElasticLauncher.__freeze__).parameters.values())[1:]
    seed, extra = params[: len(SEED_DEFAULTS)], params[len(SEED_DEFAULTS) :]
    assert [p.name for p in seed] == list(SEED_DEFAULTS)
    assert {p.name: p.default for p in seed} == SEED_DEFAULTS
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in seed)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra)  # ours follow, keyword only


def test_defaults_freeze_on_this_machine() -> None:
    launcher = ElasticLauncher().freeze()
    spec = launcher.spec
    assert isinstance(spec, LaunchSpec)
    assert (spec.min_nodes, spec.max_nodes) == (1, 1)
    assert spec.monitor_interval == 5.0 and spec.master_port is None
    assert launcher.dist_backend in ("gloo", "nccl")
    assert len(launcher.devices) == 1


def test_freeze_returns_same_object_and_has_no_side_effects() -> None:
    env = dict(os.environ)
    launcher = ElasticLauncher("cpu:0-3", omp_num_threads=4)
    assert launcher.freeze() is launcher
    assert dict(os.environ) == env
    assert [d.type for d in launcher.devices] == ["cpu"] * 4


def test_positional_and_item_access() -> None:
    launcher = ElasticLauncher("cpu:0-1", "1")
    assert launcher["devices"] == "cpu:0-1" and launcher[1] == "1"
    launcher["max_restarts"] = 2
    assert repr(launcher) == "ElasticLauncher(devices='cpu:0-1', nnodes='1', max_restarts=2)"
    assert launcher.freeze().spec.max_restarts == 2


def test_properties_before_freeze_and_outside_workers() -> None:
    launcher = ElasticLauncher("cpu")
    with pytest.raises(NotFrozenError, match=r"call \.freeze\(\) first"):
        _ = launcher.devices
    launcher.freeze()
    for name in ("rank", "local_rank", "world_size", "assigned_device", "restart_count"):
        with pytest.raises(NotInWorkerError, match="exists only inside a worker process"):
            getattr(launcher, name)


GOOD: list[dict[str, Any]] = [
    {"nnodes": "2", "node_rank": 1},
    {"nnodes": 2},
    {"nnodes": "1:4", "rdzv_backend": "c10d", "rdzv_endpoint": "127.0.0.1:29400"},
    {"rdzv_configs": "timeout=60, join_timeout=30,last_call_timeout=1"},
    {"standalone": True, "rdzv_backend": "c10d"},
    {"monitor_interval": 0.05},
    {"start_method": "forkserver"},
    {"redirects": "3", "tee": "0:1,1:2"},
    {"redirects": 1},
    {"master_port": 29500},
    {"master_addr": "[::1]"},
    {"rdzv_backend": "etcd-v2", "rdzv_endpoint": "localhost:2379", "rdzv_id": "job1"},
]


@pytest.mark.parametrize("kwargs", GOOD)
def test_valid_arguments_freeze(kwargs: dict[str, Any]) -> None:
    ElasticLauncher("cpu", **kwargs).freeze()


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"devices": "gpu:0"}, ValueError, r"invalid devices 'gpu:0'"),
    ({"devices": "cuda:0"}, ValueError, r"CUDA is not available"),
    ({"dist_backend": "nccl"}, ValueError, r"invalid dist_backend 'nccl'.*nccl needs CUDA"),
    ({"dist_backend": "foo"}, ValueError, r"invalid dist_backend 'foo': must be one of"),
    ({"nnodes": "0"}, ValueError, r"invalid nnodes '0': needs 1 <= MIN <= MAX"),
    ({"nnodes": "3:2"}, ValueError, r"invalid nnodes '3:2'"),
    ({"nnodes": "a"}, ValueError, r"invalid nnodes 'a': must be a node count N or a range"),
    ({"nnodes": "1:2:3"}, ValueError, r"invalid nnodes '1:2:3'"),
    ({"nnodes": "1:2"}, ValueError, r"static rendezvous needs a fixed node count.*c10d"),
    ({"nnodes": 1.5}, TypeError, r"nnodes must be str, not 1.5"),
    ({"node_rank": 1}, ValueError, r"invalid node_rank 1: must be below nnodes \(1\)"),
    ({"node_rank": -1}, ValueError, r"invalid node_rank -1: must be an integer >= 0"),
    ({"node_rank": "0"}, TypeError, r"node_rank must be int, not '0'"),
    ({"rdzv_backend": "zookeeper"}, ValueError, r"invalid rdzv_backend 'zookeeper': must be one"),
    ({"rdzv_backend": "c10d"}, ValueError, r"rdzv_backend='c10d' needs an endpoint host:port"),
    ({"rdzv_configs": "timeout"}, ValueError, r"invalid rdzv_configs 'timeout': 'timeout' is not"),
    ({"rdzv_configs": "timeout=abc"}, ValueError, r"timeout must be a number of seconds"),
    ({"rdzv_configs": "a=1,a=2"}, ValueError, r"a is given twice"),
    ({"rdzv_configs": "=1"}, ValueError, r"'=1' is not key=value"),
    ({"rdzv_id": ""}, ValueError, r"invalid rdzv_id '': must not be empty"),
    ({"standalone": "yes"}, TypeError, r"standalone must be bool, not 'yes'"),
    ({"max_restarts": -1}, ValueError, r"invalid max_restarts -1: must be an integer >= 0"),
    ({"max_restarts": True}, TypeError, r"max_restarts must be int, not True"),
    ({"monitor_interval": 0}, ValueError, r"invalid monitor_interval 0: must be a positive"),
    ({"monitor_interval": float("nan")}, ValueError, r"invalid monitor_interval nan"),
    ({"monitor_interval": "5"}, TypeError, r"monitor_interval must be int or float"),
    ({"start_method": "thread"}, ValueError, r"invalid start_method 'thread': must be one of"),
    ({"redirects": "4"}, ValueError, r"invalid redirects '4': must be 0-3"),
    ({"tee": "0:5"}, ValueError, r"invalid tee '0:5'"),
    ({"tee": "x"}, ValueError, r"invalid tee 'x'"),
    ({"log_dir": ""}, ValueError, r"invalid log_dir '': must be a directory path"),
    ({"log_dir": 3}, TypeError, r"log_dir must be str or PathLike, not 3"),
    ({"role": " "}, ValueError, r"invalid role ' ': must not be empty"),
    ({"master_addr": ""}, ValueError, r"invalid master_addr '': must not be empty"),
    ({"master_port": 0}, ValueError, r"invalid master_port 0: must be a TCP port 1-65535"),
    ({"master_port": 70000}, ValueError, r"invalid master_port 70000: must be a TCP port"),
    ({"master_port": "29500"}, TypeError, r"master_port must be int, not '29500'"),
    ({"omp_num_threads": 0}, ValueError, r"invalid omp_num_threads 0: must be an integer >= 1"),
    # numbers past what torch and the system take (issue 23, point 7): refused at freeze
    *[
        (
            {name: value},
            ValueError,
            rf"invalid {name} {value!r}: must be a positive number of "
            rf"seconds{' or None' if name != 'monitor_interval' else ''}, at most 1e\+09",
        )
        for name in ("collective_timeout", "timeout", "hang_timeout", "monitor_interval")
        for value in (sys.maxsize, 1e15, 1e9 + 1, float("inf"), float("nan"), -1.0, 10**400)
    ],
    ({"collective_timeout": True}, TypeError, r"collective_timeout must be int, not True"),
    *[
        ({"shutdown_timeout": value}, ValueError, rf"invalid shutdown_timeout {value!r}: must be a")
        for value in (1e15, float("inf"), float("nan"), -1.0)
    ],
    ({"max_restarts": sys.maxsize}, ValueError, rf"max_restarts {sys.maxsize}: .* 2147483647"),
    ({"node_rank": 2**31}, ValueError, r"invalid node_rank 2147483648: .*at most 2147483647"),
    ({"nnodes": "1:99999999999"}, ValueError, r"needs 1 <= MIN <= MAX <= 2147483647"),
    ({"devices": "cpu:0-1", "nnodes": "2147483647"}, ValueError, r"2 workers per node make a"),
    ({"omp_num_threads": 65536}, ValueError, r"omp_num_threads 65536: .*at most 4096"),
    ({"omp_num_threads": 2**40}, ValueError, r"omp_num_threads 1099511627776: .*at most 4096"),
    ({"master_port": 2**64}, ValueError, r"master_port 18446744073709551616: must be a TCP"),
    ({"master_port": -1}, ValueError, r"invalid master_port -1: must be a TCP port"),
    ({"rdzv_configs": "timeout=99999999999"}, ValueError, r"at most 1000000000"),
    ({"slow_rank": 2}, ValueError, r"invalid slow_rank 2: must be at least 5 seconds"),
    ({"slow_rank": 0}, ValueError, r"invalid slow_rank 0: must be a positive number"),
    ({"slow_rank": float("nan")}, ValueError, r"invalid slow_rank nan"),
    ({"slow_rank": "30"}, TypeError, r"slow_rank must be int or float, not '30'"),
    ({"report": ""}, ValueError, r"invalid report '': must be a file path or None"),
    ({"report": 3}, TypeError, r"report must be str or PathLike, not 3"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_arguments_fail_at_freeze(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    kwargs = {"devices": "cpu", **kwargs}
    launcher = ElasticLauncher(**kwargs)
    with pytest.raises(error, match=message) as info:
        launcher.freeze()
    text = str(info.value)
    assert any(hint in text for hint in ("e.g.", "valid forms:", "use ")), text  # a valid example
    launcher["devices"] = "cpu"  # still editable after a failed freeze
    for key in kwargs:
        if key != "devices":
            launcher[key] = inspect.signature(ElasticLauncher.__freeze__).parameters[key].default
    launcher.freeze()


def test_log_dir_that_is_a_file(tmp_path: Any) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file; it must be a directory"):
        ElasticLauncher("cpu", log_dir=str(path)).freeze()


def test_report_that_is_a_folder(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"is a directory; it must name a file, e\.g\. report="):
        ElasticLauncher("cpu", report=str(tmp_path)).freeze()


def test_report_and_slow_rank_as_given() -> None:
    spec = ElasticLauncher("cpu", report="out/run.json", slow_rank=None).freeze().spec
    assert (spec.report, spec.slow_rank) == ("out/run.json", None)
    assert ElasticLauncher("cpu").freeze().spec.slow_rank == 30.0


def test_unknown_argument_lists_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"valid arguments: devices, nnodes, dist_backend"):
        ElasticLauncher(device="cpu")


def test_spec_pickles() -> None:
    import pickle

    launcher = ElasticLauncher("cpu:0-1").freeze()
    again = pickle.loads(pickle.dumps(launcher))
    assert again.spec == launcher.spec
