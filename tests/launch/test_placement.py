"""What real workers see: their GPUs (a faked GPU count: hardware we do not have), their
LOCAL_RANK, device, CPU affinity and threads, for launched functions and scripts alike."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import write
from icelaunch import ElasticLauncher, _devices, cli

pytestmark = pytest.mark.timeout(120)

# No process group: a gloo group would be fine, but the workers must not touch CUDA.
NO_GROUP = {"monitor_interval": 0.5, "dist_backend": "gloo", "process_group": False}


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """8 GPUs as far as freezing knows; the workers only read their environment."""
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return monkeypatch


def seen(launcher: ElasticLauncher) -> dict[str, Any]:
    """What this worker sees of its placement."""
    return {
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "LOCAL_RANK": os.environ["LOCAL_RANK"],
        "local_rank": launcher.local_rank,
        "device": str(launcher.assigned_device),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "threads": torch.get_num_threads(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "tensor": torch.arange(3.0),  # a CPU value goes back as it is under narrowing
    }


#: as a worker that imports this module sees it: a module that asks CUDA for its devices
#: at import (``torch.cuda.is_available()``) fixes them then
AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")


def seen_at_import(launcher: ElasticLauncher) -> tuple[str | None, str]:
    return sys.modules[__name__].AT_IMPORT, __name__


def by_rank(results: dict[int, dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(results[r][k] for k in keys) for r in sorted(results)]


KEYS = ("visible", "LOCAL_RANK", "device")


def test_functions_see_the_node_gpus_in_spec_order(gpus: pytest.MonkeyPatch) -> None:
    launcher = ElasticLauncher("cuda:3,1", **NO_GROUP).freeze()
    results = launcher(seen, launcher)
    assert by_rank(results, *KEYS, "local_rank") == [
        ("3,1", "0", "cuda:0", 0),
        ("3,1", "1", "cuda:1", 1),
    ]
    assert all(torch.equal(v["tensor"], torch.arange(3.0)) for v in results.values())
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the launcher's own is untouched


def test_functions_are_unpickled_with_their_gpus_narrowed(gpus: pytest.MonkeyPatch) -> None:
    """Unpickling a function imports its module in the worker: narrowed by then."""
    launcher = ElasticLauncher("cuda:6,2", **NO_GROUP).freeze()
    results = launcher(seen_at_import, launcher)
    assert results == {0: ("6,2", __name__), 1: ("6,2", __name__)}


def test_functions_compose_the_callers_visible_devices(gpus: pytest.MonkeyPatch) -> None:
    gpus.setattr(_devices, "cuda_device_count", lambda: 4)
    gpus.setenv("CUDA_VISIBLE_DEVICES", "2,3,6,7")
    launcher = ElasticLauncher("cuda:1,3", **NO_GROUP).freeze()
    results = launcher(seen, launcher)
    assert by_rank(results, *KEYS) == [("3,7", "0", "cuda:0"), ("3,7", "1", "cuda:1")]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3,6,7"


def test_functions_with_virtual_local_rank_see_one_gpu_each(gpus: pytest.MonkeyPatch) -> None:
    launcher = ElasticLauncher("cuda:5-7", virtual_local_rank=True, **NO_GROUP).freeze()
    results = launcher(seen, launcher)
    assert by_rank(results, *KEYS, "local_rank") == [
        ("5", "0", "cuda:0", 0),
        ("6", "0", "cuda:0", 1),
        ("7", "0", "cuda:0", 2),
    ]


def test_every_gpu_in_order_leaves_the_callers_list(gpus: pytest.MonkeyPatch) -> None:
    gpus.setattr(_devices, "cuda_device_count", lambda: 2)
    gpus.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    launcher = ElasticLauncher("cuda:*", **NO_GROUP).freeze()
    results = launcher(seen, launcher)
    assert by_rank(results, *KEYS) == [("4,5", "0", "cuda:0"), ("4,5", "1", "cuda:1")]


SCRIPT = """
    import json, os, sys

    import icelaunch

    ctx = icelaunch.current()
    seen = {
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "LOCAL_RANK": os.environ["LOCAL_RANK"],
        "local_rank": ctx.local_rank,
        "device": str(ctx.assigned_device),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    import torch  # after the runner set OMP_NUM_THREADS, as a script imports it

    seen["threads"] = torch.get_num_threads()
    with open(os.path.join(sys.argv[1], f"rank{ctx.rank}.json"), "w") as fh:
        json.dump(seen, fh)
"""


def run_script(tmp_path: Path, *options: str) -> dict[int, dict[str, Any]]:
    """The script above under the command's door, in this process (its frozen spec
    sees the faked GPU count); each rank's view, by rank."""
    script = write(tmp_path, "seen.py", SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--dist-backend", "gloo", "--monitor-interval", "0.5", *options]
    assert cli.main([*argv, str(script), str(out)]) == 0
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def test_scripts_see_the_node_gpus_in_spec_order(gpus: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpus.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,9")
    results = run_script(tmp_path, "--devices", "cuda:7,2")
    assert by_rank(results, *KEYS, "local_rank") == [
        ("9,2", "0", "cuda:0", 0),
        ("9,2", "1", "cuda:1", 1),
    ]


def test_scripts_with_virtual_local_rank_see_one_gpu_each(
    gpus: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results = run_script(tmp_path, "--devices", "cuda:1,3", "--virtual-local-rank")
    assert by_rank(results, *KEYS, "local_rank") == [
        ("1", "0", "cuda:0", 0),
        ("3", "0", "cuda:0", 1),
    ]


# --- CPUs and threads --------------------------------------------------------------------------


def test_cpu_ranks_keep_the_launchers_cpus_and_run_one_thread_each(
    gpus: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``cpu:0-3`` counts workers: no rank is pinned to a core (decided: docs/devices.md)."""
    mine = sorted(os.sched_getaffinity(0))
    launcher = ElasticLauncher("cpu:0-3", monitor_interval=0.5).freeze()
    functions = launcher(seen, launcher)
    scripts = run_script(tmp_path, "--devices", "cpu:0-3")
    for results in (functions, scripts):
        assert (
            by_rank(results, "visible", "device", "cpus", "omp", "threads")
            == [(None, "cpu", mine, "1", 1)] * 4
        )


def test_threads_follow_the_callers_variable_set_after_the_warm_start(
    gpus: pytest.MonkeyPatch,
) -> None:
    """The fork server imported torch before the caller set OMP_NUM_THREADS."""
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    launcher(seen, launcher)  # the warm fork server runs now
    gpus.setenv("OMP_NUM_THREADS", "3")
    results = launcher(seen, launcher)
    assert by_rank(results, "omp", "threads") == [("3", 3)] * 2
