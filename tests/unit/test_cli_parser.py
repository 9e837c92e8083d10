"""The ``icelaunch`` command's parsing, in-process: flags, usage errors, help."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from icelaunch import _devices, cli
from icelaunch._launcher import ElasticLauncher
from icelaunch._spec import LaunchSpec

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
    (["--collective-timeout", "1e15"], "collective_timeout 1000000000000000.0: must be a positive"),
    (["--timeout", "inf"], "invalid timeout inf: must be a positive number of seconds"),
    (["--omp-num-threads", "100000"], "invalid omp_num_threads 100000: must be an integer >= 1"),
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
