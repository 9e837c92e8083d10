"""The ``icelaunch`` command as users run it: real launches in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import icelaunch, launch, write

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cli_allreduce.py"


@pytest.mark.timeout(60)
def test_help_is_fast_and_does_not_import_torch():
    argv = [sys.executable, "-X", "importtime", "-m", "icelaunch", "--help"]
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert elapsed < 2.0  # measured ~0.1 s; generous for a loaded machine


@pytest.mark.timeout(60)
def test_script_runs_in_every_worker_with_rank_prefixes(tmp_path: Path):
    path = write(
        tmp_path,
        "hello.py",
        """
        import os, sys
        print("hello", os.environ["RANK"], os.environ["WORLD_SIZE"], sys.argv[1:])
        """,
    )
    result = launch(icelaunch("--devices", "cpu:0-1", str(path), "--lr", "0.1"))
    assert result.returncode == 0, result.stderr
    assert "[rank0]: hello 0 2 ['--lr', '0.1']" in result.stdout
    assert "[rank1]: hello 1 2 ['--lr', '0.1']" in result.stdout


@pytest.mark.timeout(60)
def test_exit_code_of_the_failing_worker(tmp_path: Path):
    path = write(
        tmp_path,
        "exit3.py",
        """
        import os, sys
        if os.environ["RANK"] == "1":
            sys.exit(3)
        """,
    )
    result = launch(icelaunch("--nproc-per-node", "2", str(path)))
    assert result.returncode == 3, result.stderr
    assert "rank 1 (local rank 1, exit code 3)" in result.stderr


@pytest.mark.timeout(60)
def test_an_exception_exits_1_with_its_traceback(tmp_path: Path):
    path = write(
        tmp_path,
        "boom.py",
        """
        import os
        if os.environ["RANK"] == "1":
            raise ValueError("shard 7 is empty")
        """,
    )
    result = launch([sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1", str(path)])
    assert result.returncode == 1, result.stderr
    assert "worker(s) of" in result.stderr
    assert "rank 1 (local rank 1, exit code 1): ValueError: shard 7 is empty" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert f'File "{path}", line 4, in <module>' in result.stderr


@pytest.mark.timeout(60)
def test_a_signal_exits_128_plus_its_number(tmp_path: Path):
    path = write(
        tmp_path,
        "killed.py",
        """
        import os, signal
        if os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    result = launch(icelaunch("--devices", "cpu:0-1", str(path)))
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert "signal SIGKILL" in result.stderr


@pytest.mark.timeout(60)
def test_ctrl_c_exits_130_and_stops_the_workers(tmp_path: Path):
    path = write(
        tmp_path,
        "wait.py",
        """
        import time
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    argv = icelaunch("--devices", "cpu:0-1", str(path))
    result = launch(argv, interrupt_when="[rank1]: ready")
    assert result.returncode == 130, result.stderr
    assert "the launch was stopped by SIGINT" in result.stderr


@pytest.mark.timeout(60)
def test_module_from_pythonpath(tmp_path: Path):
    write(tmp_path, "mypkg/__init__.py", "")
    write(
        tmp_path,
        "mypkg/train.py",
        """
        import os, sys
        print("module", __name__, os.environ["RANK"], sys.argv[1:])
        """,
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    argv = [sys.executable, "-m", "icelaunch", "--nproc_per_node", "2", "-m", "mypkg.train", "x"]
    result = launch(argv, env=env)
    assert result.returncode == 0, result.stderr
    assert "[rank0]: module __main__ 0 ['x']" in result.stdout
    assert "[rank1]: module __main__ 1 ['x']" in result.stdout


@pytest.mark.timeout(60)
def test_current_inside_a_launched_script(tmp_path: Path):
    path = write(
        tmp_path,
        "whoami.py",
        """
        import json, os
        import torch
        import icelaunch

        ctx = icelaunch.current()
        assert ctx is icelaunch.current()
        assert isinstance(ctx.assigned_device, torch.device)
        fields = {k: getattr(ctx, k) for k in (
            "rank", "local_rank", "world_size", "local_world_size", "group_rank",
            "group_world_size", "role_rank", "role_name", "role_world_size", "master_addr",
            "master_port", "restart_count", "max_restarts", "rdzv_id", "dist_backend")}
        fields["assigned_device"] = str(ctx.assigned_device)
        fields["omp"] = os.environ["OMP_NUM_THREADS"]
        print("CTX", json.dumps(fields, sort_keys=True))
        """,
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    argv = icelaunch(
        "--devices", "cpu:0-1", "--role", "trainer", "--rdzv-id", "job-9",
        "--max-restarts", "1", "--omp-num-threads", "2", str(path),
    )  # fmt: skip
    result = launch(argv, env=env)
    assert result.returncode == 0, result.stderr
    seen = [
        json.loads(line.split("CTX ", 1)[1])
        for line in result.stdout.splitlines()
        if "CTX " in line
    ]
    assert sorted(c["rank"] for c in seen) == [0, 1]
    for ctx in seen:
        assert ctx["local_rank"] == ctx["rank"] == ctx["role_rank"]
        assert ctx["world_size"] == ctx["local_world_size"] == ctx["role_world_size"] == 2
        assert (ctx["group_rank"], ctx["group_world_size"]) == (0, 1)
        assert (ctx["role_name"], ctx["rdzv_id"], ctx["dist_backend"]) == (
            "trainer",
            "job-9",
            "gloo",
        )
        assert (ctx["restart_count"], ctx["max_restarts"]) == (0, 1)
        assert ctx["master_addr"] == "127.0.0.1" and ctx["master_port"] > 0
        assert (ctx["assigned_device"], ctx["omp"]) == ("cpu", "2")


@pytest.mark.timeout(60)
def test_init_process_group_and_all_reduce_in_a_script(tmp_path: Path):
    path = write(
        tmp_path,
        "allreduce.py",
        """
        import torch
        import torch.distributed as dist
        import icelaunch

        ctx = icelaunch.init_process_group()
        assert icelaunch.init_process_group() is ctx  # a second call does nothing
        assert dist.get_backend() == "gloo"
        assert (dist.get_rank(), dist.get_world_size()) == (ctx.rank, ctx.world_size)
        t = torch.tensor([float(ctx.rank + 1)])
        dist.all_reduce(t)
        print("SUM", t.item())
        """,
    )
    result = launch(icelaunch("--devices", "cpu:0-1", str(path)))
    assert result.returncode == 0, result.stderr
    assert "[rank0]: SUM 3.0" in result.stdout
    assert "[rank1]: SUM 3.0" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_example_cli_allreduce():
    result = launch(icelaunch("--devices", "cpu:0-1", str(EXAMPLE)))
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"[rank{rank}]: rank {rank}/2 " in result.stdout
    assert result.stdout.count("all_reduce sum 1 (expected 1)") == 2
