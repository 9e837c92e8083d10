"""The ``icelaunch`` command: parsing in-process, real launches as subprocesses."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from icelaunch import _devices, cli
from icelaunch._launcher import ElasticLauncher
from icelaunch._spec import LaunchSpec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cli_allreduce.py"
CONSOLE_SCRIPT = Path(sys.executable).with_name("icelaunch")
RUN_TIMEOUT_S = 45
GRACE_S = 5.0
PARAMETERS = [  # the seed's parameters; keyword-only extras concern function launches
    name
    for name, p in inspect.signature(ElasticLauncher.__freeze__).parameters.items()
    if name != "self" and p.kind is not p.KEYWORD_ONLY
]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """An empty script file, so parsing finds the script it is given."""
    path = tmp_path / "train.py"
    path.write_text("")
    return path


def spec_of(argv: list[str]) -> LaunchSpec:
    return cli.parse(cli.build_parser(), argv).spec


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --- parsing ------------------------------------------------------------------------------

FLAG_CASES = [
    (["--devices", "cpu:0-2"], {"devices": ("cpu", "cpu", "cpu")}),
    (["--nnodes", "2"], {"min_nodes": 2, "max_nodes": 2}),
    (["--dist-backend", "gloo"], {"dist_backend": "gloo"}),
    (["--rdzv-id", "job-7"], {"rdzv_id": "job-7"}),
    (
        ["--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400", "--nnodes", "1:4"],
        {"rdzv_backend": "c10d", "rdzv_endpoint": "10.0.0.1:29400", "max_nodes": 4},
    ),
    (["--rdzv-configs", "timeout=60"], {"rdzv_configs": (("timeout", "60"),)}),
    (
        ["--rdzv-conf", "timeout=60,join_timeout=5"],
        {"rdzv_configs": (("timeout", "60"), ("join_timeout", "5"))},
    ),
    (["--standalone"], {"standalone": True}),
    (["--max-restarts", "2"], {"max_restarts": 2}),
    (["--monitor-interval", "0.5"], {"monitor_interval": 0.5}),
    (["--start-method", "fork"], {"start_method": "fork"}),
    (["--redirects", "3"], {"redirects": "3"}),
    (["-r", "0:3,1:2"], {"redirects": "0:3,1:2"}),
    (["--tee", "1"], {"tee": "1"}),
    (["-t", "2"], {"tee": "2"}),
    (["--role", "trainer"], {"role": "trainer"}),
    (["--nnodes", "2", "--node-rank", "1"], {"node_rank": 1}),
    (["--master-addr", "10.0.0.1"], {"master_addr": "10.0.0.1"}),
    (["--master-port", "29500"], {"master_port": 29500}),
    (["--omp-num-threads", "4"], {"omp_num_threads": 4}),
]


@pytest.mark.parametrize(("flags", "expected"), FLAG_CASES)
def test_each_flag_reaches_the_spec(flags: list[str], expected: dict[str, Any], script: Path):
    spec = spec_of([*flags, str(script)])
    assert {name: getattr(spec, name) for name in expected} == expected


@pytest.mark.parametrize(("flags", "expected"), FLAG_CASES)
def test_underscore_spellings_are_the_same_flags(
    flags: list[str], expected: dict[str, Any], script: Path
):
    underscored = ["--" + f[2:].replace("-", "_") if f.startswith("--") else f for f in flags]
    assert spec_of([*underscored, str(script)]) == spec_of([*flags, str(script)])


def test_every_seed_parameter_is_a_flag_with_help():
    covered = {name for flags, _ in FLAG_CASES for name in _flag_names(flags)}
    assert set(PARAMETERS) <= covered | {"log_dir"}  # log_dir: see its own test
    assert (
        set(PARAMETERS)
        <= set(cli._parser.HELP)
        <= {p.name for p in cli._parser._freeze_parameters()}
    )
    help_text = cli.build_parser().format_help()
    for name in PARAMETERS:
        assert "--" + name.replace("_", "-") in help_text


def _flag_names(flags: list[str]) -> list[str]:
    parser = cli.build_parser()
    names = []
    for action in parser._actions:
        if any(f in action.option_strings for f in flags):
            names.append(action.dest)
    return names


def test_log_dir_flag(tmp_path: Path, script: Path):
    for flag in ("--log-dir", "--log_dir"):
        assert spec_of([flag, str(tmp_path / "logs"), str(script)]).log_dir == str(
            tmp_path / "logs"
        )


def test_defaults_are_the_launchers_own(script: Path):
    assert spec_of([str(script)]) == ElasticLauncher().freeze().spec


@pytest.mark.parametrize(
    ("value", "ncuda", "devices"),
    [
        ("2", 0, ("cpu", "cpu")),
        ("2", 8, ("cuda:0", "cuda:1")),
        ("1", 0, ("cpu",)),
        ("gpu", 3, ("cuda:0", "cuda:1", "cuda:2")),
        ("auto", 2, ("cuda:0", "cuda:1")),
        ("cpu", 8, ("cpu",) * 5),
        ("auto", 0, ("cpu",) * 5),
    ],
)
def test_nproc_per_node_forms(
    value: str,
    ncuda: int,
    devices: tuple[str, ...],
    script: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: ncuda)
    monkeypatch.setattr(_devices, "cpu_count", lambda: 5)
    for flag in ("--nproc-per-node", "--nproc_per_node"):
        assert spec_of([flag, value, str(script)]).devices == devices


def test_script_args_and_module(script: Path):
    parse = cli.parse
    plain = parse(cli.build_parser(), ["--devices", "cpu", str(script), "-m", "--devices", "x"])
    assert plain.command == (sys.executable, "-u", str(script), "-m", "--devices", "x")
    module = parse(cli.build_parser(), ["-m", "pkg.train", "--lr", "0.1"])
    assert module.command == (sys.executable, "-u", "-m", "pkg.train", "--lr", "0.1")
    bare = parse(cli.build_parser(), ["--no-python", "/bin/echo", "hi"])
    assert bare.command == ("/bin/echo", "hi")


def test_dry_run_prints_spec_and_command(script: Path, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run_main(["--dry_run", "--nproc-per-node", "2", str(script), "a"], capsys)
    assert code == 0
    shown = json.loads(out)
    assert shown["spec"]["devices"] == ["cpu", "cpu"]
    assert shown["command"][-2:] == [str(script), "a"]


BAD = [
    (["--devices", "cuda:2-0"], "invalid devices 'cuda:2-0': a range must go upwards"),
    (["--devices", "tpu"], "invalid devices 'tpu'"),
    (["--max-restarts", "-1"], "invalid max_restarts -1: must be an integer >= 0"),
    (["--max-restarts", "x"], "argument --max-restarts: invalid int value: 'x'"),
    (["--master-port", "70000"], "invalid master_port 70000: must be a TCP port"),
    (["--monitor-interval", "0"], "invalid monitor_interval 0.0"),
    (["--rdzv-backend", "zk"], "invalid rdzv_backend 'zk': must be one of static"),
    (["--nnodes", "1:2"], "the static rendezvous needs a fixed node count"),
    (["--node-rank", "1"], "invalid node_rank 1: must be below nnodes (1)"),
    (["--rdzv-conf", "timeout=soon"], "timeout must be a number of seconds"),
    (["--redirects", "9"], "invalid redirects '9'"),
    (["--start-method", "thread"], "invalid start_method 'thread'"),
    (["--dist-backend", "nccl", "--devices", "cpu"], "nccl needs CUDA devices"),
    (["--nproc-per-node", "0"], "invalid nproc_per_node '0'"),
    (["--nproc-per-node", "two"], "invalid nproc_per_node 'two'"),
    (["--nproc-per-node", "2", "--devices", "cpu"], "give --devices or --nproc-per-node"),
    (["--dev", "cpu"], "unrecognized arguments: --dev"),  # no abbreviations
    (["-m", "--no-python"], "give -m/--module or --no-python, not both"),
]


@pytest.mark.parametrize(("flags", "message"), BAD)
def test_bad_values_exit_2_with_the_message(
    flags: list[str], message: str, script: Path, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run_main([*flags, str(script)], capsys)
    assert code == 2
    assert out == ""
    assert f"{cli.PROG}: error: " in err
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no script given"),
        (["--devices", "cpu"], "no script given"),
        (["no_such_script.py"], "script 'no_such_script.py' not found"),
    ],
)
def test_missing_script_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
):
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert f"icelaunch: error: {message}" in err


def test_help_shows_grammar_examples_and_torchrun_flags(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for text in (
        "icelaunch [options] script.py",
        "-m package.module",
        "cpu:0-3",
        "cuda:0-2,7",
        "cuda:*",
        "auto:*",
        "--nproc-per-node",
        "--rdzv-conf",
        "--standalone",
        "exit status:",
    ):
        assert text in out


def test_version(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run_main(["--version"], capsys)
    assert (code, out.strip()) == (0, "icelaunch 0.1.0")


def test_exit_status_of_a_failed_worker():
    assert [cli.exit_status(c) for c in (3, 1, 255, -9, -15, 0)] == [3, 1, 255, 137, 143, 1]


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


# --- real launches ------------------------------------------------------------------------


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def launch(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    interrupt_when: str | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run a command line to the end; fail if it or any worker outlives it.

    Output goes to files, not pipes, so a leaked process holding them cannot stall
    the wait. With ``interrupt_when``, SIGINT is sent once stdout shows that text.
    """
    seen: dict[int, psutil.Process] = {}
    with tempfile.TemporaryDirectory() as logs:
        out_path, err_path = Path(logs, "stdout"), Path(logs, "stderr")
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env=env)
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update({p.pid: p for p in _descendants(parent)})
            if interrupt_when and interrupt_when in out_path.read_text():
                proc.send_signal(signal.SIGINT)
                interrupt_when = None
            time.sleep(0.05)
        if proc.poll() is None:
            for p in [*seen.values(), parent]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()
            pytest.fail(f"{argv} ran past {timeout} s")
        result = subprocess.CompletedProcess(
            argv, proc.returncode, out_path.read_text(), err_path.read_text()
        )
    deadline = time.monotonic() + GRACE_S
    while _alive(list(seen.values())) and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _alive(list(seen.values()))
    for p in survivors:
        p.kill()
    assert not survivors, f"workers survived the command: {survivors}"
    return result


def icelaunch(*args: str) -> list[str]:
    """The installed console script (``python -m icelaunch`` where it is missing)."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT), *args]
    return [sys.executable, "-m", "icelaunch", *args]


def write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


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
    assert "icelaunch: interrupted" in result.stderr


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


@pytest.mark.timeout(60)
def test_main_in_process_leaves_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = write(tmp_path, "omp.py", 'import os\nprint("OMP", os.environ["OMP_NUM_THREADS"])\n')
    assert cli.main(["--devices", "cpu:0-1", "--omp-num-threads", "3", str(path)]) == 0
    assert "OMP_NUM_THREADS" not in os.environ
    out = capfd.readouterr().out
    assert "[rank0]: OMP 3" in out and "[rank1]: OMP 3" in out
