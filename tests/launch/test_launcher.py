"""Real launches: real worker processes, real gloo collectives, nothing left behind."""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = pytest.mark.timeout(120)

FAST = {"monitor_interval": 0.5}


class CustomError(Exception):
    """A user exception type the caller can catch again after the launch."""


def all_reduce_worker(launcher: ElasticLauncher) -> float:
    t = torch.tensor([float(launcher.rank + 1)])
    dist.all_reduce(t)
    return float(t.item())


def properties_worker(launcher: ElasticLauncher) -> dict[str, Any]:
    names = [
        "rank", "local_rank", "world_size", "local_world_size", "group_rank",
        "group_world_size", "role_rank", "role_name", "role_world_size", "master_addr",
        "master_port", "restart_count", "max_restarts", "rdzv_id", "dist_backend",
    ]  # fmt: skip
    values = {name: getattr(launcher, name) for name in names}
    values["assigned_device"] = launcher.assigned_device
    values["devices"] = launcher.devices
    values["pg_rank"] = dist.get_rank()
    values["pg_world"] = dist.get_world_size()
    values["pg_backend"] = dist.get_backend()
    values["omp"] = os.environ.get("OMP_NUM_THREADS")
    values["threads"] = torch.get_num_threads()
    return values


def returning_worker(launcher: ElasticLauncher, base: int, payload: dict[str, Any]) -> Any:
    return {"rank": launcher.rank, "value": base + launcher.rank, "echo": payload}


def failing_worker(launcher: ElasticLauncher) -> None:
    if launcher.rank == 1:
        raise CustomError("rank one gives up")
    t = torch.ones(1)
    dist.all_reduce(t)  # the peers block here until the group is torn down


def flaky_worker(launcher: ElasticLauncher) -> tuple[int, int]:
    if launcher.restart_count == 0 and launcher.rank == 0:
        raise RuntimeError("fails on attempt 0")
    t = torch.ones(1)
    dist.all_reduce(t)
    return launcher.restart_count, int(t.item())


def printing_worker(launcher: ElasticLauncher) -> int:
    print(f"hello from rank {launcher.rank}")
    print(f"oops from rank {launcher.rank}", file=sys.stderr)
    return launcher.rank


def unpicklable_worker(launcher: ElasticLauncher) -> Any:
    return (launcher.rank for _ in range(2))  # a generator: not even cloudpickle sends it


def test_four_worker_gloo_all_reduce() -> None:
    launcher = ElasticLauncher("cpu:0-3", **FAST).freeze()
    assert launcher(all_reduce_worker, launcher) == {r: 10.0 for r in range(4)}


def test_properties_inside_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    launcher = ElasticLauncher("cpu:0-2", role="trainer", omp_num_threads=1, **FAST).freeze()
    results = launcher(properties_worker, launcher)
    assert sorted(results) == [0, 1, 2]
    for rank, v in results.items():
        assert (v["rank"], v["local_rank"], v["role_rank"]) == (rank, rank, rank)
        assert (v["world_size"], v["local_world_size"], v["role_world_size"]) == (3, 3, 3)
        assert (v["group_rank"], v["group_world_size"]) == (0, 1)
        assert v["role_name"] == "trainer"
        assert v["master_addr"] == "127.0.0.1"
        assert 16894 <= v["master_port"] <= 17194  # the seed's range for master_port=None
        assert (v["restart_count"], v["max_restarts"]) == (0, 0)
        assert len(v["rdzv_id"]) == 32 and v["rdzv_id"] == results[0]["rdzv_id"]  # fresh id
        assert v["dist_backend"] == "gloo" and v["pg_backend"] == "gloo"
        assert v["assigned_device"] == torch.device("cpu")
        assert v["devices"] == [torch.device("cpu")] * 3
        assert (v["pg_rank"], v["pg_world"]) == (rank, 3)
        assert v["omp"] == "1" and v["threads"] == 1
    assert "OMP_NUM_THREADS" not in os.environ


def test_omp_num_threads_keeps_existing_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    launcher = ElasticLauncher("cpu", omp_num_threads=1, **FAST).freeze()
    assert launcher(properties_worker, launcher)[0]["omp"] == "2"


def test_return_values_by_global_rank() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    payload = {"tensor": torch.arange(3), "text": "x" * 1000}
    results = launcher(returning_worker, launcher, 100, payload)
    assert sorted(results) == [0, 1]
    for rank, value in results.items():
        assert value["rank"] == rank and value["value"] == 100 + rank
        assert torch.equal(value["echo"]["tensor"], torch.arange(3))


def test_second_launch_with_same_launcher() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert launcher(all_reduce_worker, launcher) == launcher(all_reduce_worker, launcher)


def test_failure_names_rank_type_message_and_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    launcher = ElasticLauncher("cpu:0-2", **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(failing_worker, launcher)
    err = info.value
    assert isinstance(err, ChildFailedError)
    assert 1 in err.ranks
    detail = err.details[1]
    assert (detail.rank, detail.local_rank, detail.exitcode) == (1, 1, 1)
    assert detail.exc_type is not None and detail.exc_type.endswith("CustomError")
    assert detail.message == "rank one gives up"
    assert "in failing_worker" in detail.traceback
    assert err.first.rank == 1  # the root cause comes first, before its collateral
    assert isinstance(err.exceptions[1], CustomError)
    text = str(err)
    assert "rank 1 (local rank 1, exit code 1)" in text
    assert "CustomError: rank one gives up" in text
    assert 'raise CustomError("rank one gives up")' in text
    again = pickle.loads(pickle.dumps(err))
    assert again.details == err.details
    # no job or log directory left behind (multiprocessing's own pymp-* folder lives
    # as long as this process, whichever launch happened to create it)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith("pymp-")] == []


def test_unpicklable_return_value_is_a_failure() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    with pytest.raises(WorkerFailedError, match="cannot be pickled back to the launcher"):
        launcher(unpicklable_worker, launcher)


def test_restart_after_failure_shows_restart_count() -> None:
    launcher = ElasticLauncher("cpu:0-1", max_restarts=1, **FAST).freeze()
    assert launcher(flaky_worker, launcher) == {0: (1, 2), 1: (1, 2)}


def test_restarts_exhausted_reports_last_attempt() -> None:
    launcher = ElasticLauncher("cpu:0-1", max_restarts=1, **FAST).freeze()
    with pytest.raises(WorkerFailedError, match=r"rank one gives up|CustomError"):
        launcher(failing_worker, launcher)


def test_log_dir_keeps_per_rank_files(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    launcher = ElasticLauncher(
        "cpu:0-1", redirects="3", log_dir=str(tmp_path), rdzv_id="logjob", **FAST
    ).freeze()
    assert launcher(printing_worker, launcher) == {0: 0, 1: 1}
    (job_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("logjob_")]
    for rank in (0, 1):
        rank_dir = job_dir / "attempt_0" / str(rank)
        assert f"hello from rank {rank}" in (rank_dir / "stdout.log").read_text()
        assert f"oops from rank {rank}" in (rank_dir / "stderr.log").read_text()
    out, _ = capfd.readouterr()
    assert "hello from rank" not in out  # redirected, not teed


def test_tee_writes_files_and_console(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    launcher = ElasticLauncher("cpu:0-1", tee="1", log_dir=str(tmp_path), **FAST).freeze()
    launcher(printing_worker, launcher)
    out, _ = capfd.readouterr()
    assert "[rank0]: hello from rank 0" in out and "[rank1]: hello from rank 1" in out
    logs = sorted(tmp_path.glob("*/attempt_0/*/stdout.log"))
    assert len(logs) == 2 and "hello from rank" in logs[0].read_text()


def test_standalone_runs_on_a_private_port() -> None:
    launcher = ElasticLauncher("cpu:0-1", standalone=True, **FAST).freeze()
    assert launcher(all_reduce_worker, launcher) == {0: 3.0, 1: 3.0}


def test_explicit_busy_master_port_names_the_port() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        launcher = ElasticLauncher("cpu", master_port=port, **FAST).freeze()
        with pytest.raises(RuntimeError, match=f"port {port}.*already in use"):
            launcher(all_reduce_worker, launcher)


def test_seed_defaults_launch() -> None:
    """The seed's defaults (monitor_interval=5) still return as soon as workers finish."""
    launcher = ElasticLauncher("cpu:0-1").freeze()
    assert launcher(all_reduce_worker, launcher) == {0: 3.0, 1: 3.0}


def counting_failure(launcher: ElasticLauncher, counter: str) -> None:
    with open(counter, "a") as fh:
        fh.write(f"{launcher.rank}\n")
    raise RuntimeError("Connection closed by peer (raised by the user's own code)")


def test_failures_in_user_code_are_never_retried(tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(counting_failure, launcher, str(counter))
    assert not info.value.before_user_code
    assert not info.value.transient_setup_failure
    assert sorted(counter.read_text().split()) == ["0", "1"]  # one attempt only
