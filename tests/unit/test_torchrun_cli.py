"""torchrun's options and their PET_* forms under the ``icelaunch`` command."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from torch.distributed import run as torchrun

from icelaunch import cli
from icelaunch._launcher import ElasticLauncher
from icelaunch.cli import _torchrun

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN_OPTIONS = [
    action
    for action in torchrun.get_args_parser()._actions
    if action.option_strings and action.dest != "help"
]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text("")
    return path


@pytest.fixture
def no_pet(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("PET_"):
            monkeypatch.delenv(name)
    return monkeypatch


def parse(argv: list[str]) -> cli.Invocation:
    return cli.parse(cli.build_parser(), argv)


def _long_flag(action: object) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))  # type: ignore[attr-defined]


@pytest.mark.parametrize("action", TORCHRUN_OPTIONS, ids=_long_flag)
def test_every_torchrun_option_is_accepted_or_refused_with_a_reason(
    action: object, script: Path, no_pet: pytest.MonkeyPatch
) -> None:
    flags = {s for a in cli.build_parser()._actions for s in a.option_strings}
    for spelling in action.option_strings:  # type: ignore[attr-defined]
        assert spelling in flags, f"torchrun's {spelling} is unknown to icelaunch"
    dest = action.dest  # type: ignore[attr-defined]
    if dest in _torchrun.REFUSED:
        with pytest.raises(ValueError, match=r"is not supported: .+; use .+"):
            parse([_long_flag(action), "x", str(script)])


#: torchrun options of newer torch releases than the oldest we support (2.11)
LATER_OPTIONS = {  # torchrun 2.13; 2.15
    "shutdown_timeout",
    "log_line_prefix_template",
    "print_completion",
}


def test_accepted_and_refused_are_exactly_torchruns_options() -> None:
    dests = {a.dest for a in TORCHRUN_OPTIONS}
    ours = set(_torchrun.ACCEPTED) | set(_torchrun.REFUSED)
    assert dests <= ours, "a new torchrun option: accept or refuse it"
    assert ours - dests <= LATER_OPTIONS, "an option torchrun no longer has"
    assert not set(_torchrun.ACCEPTED) & set(_torchrun.REFUSED)
    ours = {a.dest for a in cli.build_parser()._actions}
    assert {_torchrun.RENAMED.get(d, d) for d in _torchrun.ACCEPTED} <= ours


def test_only_torchruns_own_variables_are_read(script: Path, no_pet: pytest.MonkeyPatch) -> None:
    no_pet.setenv("PET_DEVICES", "cpu:0-3")  # no torchrun option: not read
    no_pet.setenv("PET_OMP_NUM_THREADS", "4")
    spec = parse([str(script)]).spec
    assert spec.omp_num_threads == 1 and len(spec.devices) == 1


@pytest.mark.parametrize("action", TORCHRUN_OPTIONS, ids=_long_flag)
def test_the_docs_table_lists_every_torchrun_option(action: object) -> None:
    page = (ROOT / "docs" / "command-line.md").read_text()
    table = page.split("| torchrun | icelaunch |", 1)[1]
    table = table.split("\n\n", 1)[0]
    assert f"`{_long_flag(action)}" in table


def test_keyword_only_parameters_become_flags_automatically() -> None:
    flags = {s for a in cli.build_parser()._actions for s in a.option_strings}
    signature = inspect.signature(ElasticLauncher.__freeze__)
    for name in signature.parameters:
        if name == "self" or name in cli._parser.FUNCTION_ONLY:
            continue
        assert "--" + name.replace("_", "-") in flags, name
    assert "--warm-start" not in flags and "--process-group" not in flags


PET_CASES = [
    ({"PET_NPROC_PER_NODE": "2"}, [], {"devices": ("cpu", "cpu")}),
    ({"PET_NPROC_PER_NODE": "2"}, ["--devices", "cpu:0-2"], {"devices": ("cpu",) * 3}),
    ({"PET_NPROC_PER_NODE": "2"}, ["--nproc-per-node", "1"], {"devices": ("cpu",)}),
    ({"PET_MAX_RESTARTS": "3"}, [], {"max_restarts": 3}),
    ({"PET_MAX_RESTARTS": "3"}, ["--max-restarts", "1"], {"max_restarts": 1}),
    ({"PET_MONITOR_INTERVAL": "0.5"}, [], {"monitor_interval": 0.5}),
    ({"PET_STANDALONE": "1"}, [], {"standalone": True}),
    ({"PET_STANDALONE": "0"}, [], {"standalone": False}),
    ({"PET_ROLE": "trainer", "PET_START_METHOD": "fork"}, [], {"role": "trainer"}),
    ({"PET_RDZV_CONF": "timeout=60"}, [], {"rdzv_configs": (("timeout", "60"),)}),
    ({"PET_NNODES": "2", "PET_MASTER_PORT": "29500"}, [], {"max_nodes": 2}),
    ({"PET_REDIRECTS": "3", "PET_TEE": "1"}, [], {"redirects": "3", "tee": "1"}),
    ({"PET_LOCAL_RANKS_FILTER": "0"}, [], {"local_ranks_filter": (0,)}),
    ({"PET_VIRTUAL_LOCAL_RANK": "1"}, [], {"virtual_local_rank": True}),
    ({"PET_VIRTUAL_LOCAL_RANK": "0"}, [], {"virtual_local_rank": False}),
    ({}, ["--virtual-local-rank"], {"virtual_local_rank": True}),
    ({}, ["--virtual_local_rank"], {"virtual_local_rank": True}),
]


@pytest.mark.parametrize(("env", "argv", "expected"), PET_CASES)
def test_pet_variables_are_option_defaults(
    env: dict[str, str],
    argv: list[str],
    expected: dict[str, object],
    script: Path,
    no_pet: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        no_pet.setenv(name, value)
    spec = parse([*argv, str(script)]).spec
    assert {k: getattr(spec, k) for k in expected} == expected


def test_pet_switches_pick_the_command(script: Path, no_pet: pytest.MonkeyPatch) -> None:
    no_pet.setenv("PET_MODULE", "1")
    assert parse(["json.tool"]).command[-2:] == ("-m", "json.tool")
    no_pet.setenv("PET_MODULE", "0")
    no_pet.setenv("PET_NO_PYTHON", "1")
    assert parse(["/bin/true"]).command == ("/bin/true",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PET_MAX_RESTARTS": "many"}, "PET_MAX_RESTARTS='many': must be int"),
        ({"PET_STANDALONE": "yes"}, "PET_STANDALONE='yes': must be 0 or 1"),
        ({"PET_LOGS_SPECS": "mine"}, "PET_LOGS_SPECS='mine' asks for --logs-specs"),
    ],
)
def test_bad_or_refused_pet_variables_are_named(
    env: dict[str, str], message: str, script: Path, no_pet: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        no_pet.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        parse([str(script)])


@pytest.mark.parametrize("spelling", ["--numa-binding", "--numa_binding"])
def test_numa_binding_reaches_the_spec_where_gpus_and_numactl_are(
    spelling: str, script: Path, no_pet: pytest.MonkeyPatch
) -> None:
    from icelaunch import _devices, _spec

    no_pet.setattr(_devices, "cuda_device_count", lambda: 8)
    no_pet.setattr(_spec.shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = ["--devices", "cuda:4-7", spelling, "socket", str(script)]
    spec = parse(argv).spec
    assert (spec.numa_binding, spec.visible_devices) == ("socket", (4, 5, 6, 7))


def test_numa_binding_for_cpu_workers_is_refused_with_the_reason(
    script: Path, no_pet: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="CPU workers have no GPU"):
        parse(["--devices", "cpu:0-1", "--numa-binding", "node", str(script)])


def test_local_addr_goes_to_the_rendezvous(script: Path, no_pet: pytest.MonkeyPatch) -> None:
    spec = parse(["--local-addr", "10.0.0.2", "--rdzv-conf", "timeout=9", str(script)]).spec
    assert spec.rdzv_configs == (("timeout", "9"), ("local_addr", "10.0.0.2"))


def test_run_path_is_accepted(script: Path, no_pet: pytest.MonkeyPatch) -> None:
    assert parse(["--run-path", str(script)]).command[-1] == str(script)


def test_signals_to_handle(script: Path, no_pet: pytest.MonkeyPatch) -> None:
    invocation = parse(["--signals-to-handle", "SIGTERM, SIGUSR1", str(script)])
    assert invocation.signals_to_handle == "SIGTERM,SIGUSR1"
    with pytest.raises(ValueError, match="'SIGFOO' is not a signal name"):
        parse(["--signals-to-handle", "SIGTERM,SIGFOO", str(script)])
