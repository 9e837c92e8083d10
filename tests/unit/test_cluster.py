"""Cluster environments (SLURM, torchrun-style variables), simulated with monkeypatch."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pytest

from icelaunch import ElasticLauncher
from icelaunch._cluster import detect, expand_nodelist, fill

ALL_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_NNODES",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "SLURM_JOB_NODELIST",
    "SLURM_NODELIST",
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "NNODES",
    "NODE_RANK",
    "PET_NNODES",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
    "PET_RDZV_BACKEND",
    "PET_RDZV_ENDPOINT",
    "PET_RDZV_ID",
    "PET_RDZV_CONF",
    "SLURM_STEP_ID",
    "SLURM_STEPID",
    "SLURM_STEP_NUM_NODES",
    "SLURM_STEP_NODELIST",
    "LOCAL_RANK",
    "TORCHELASTIC_RUN_ID",
)

SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_NNODES": "3",
    "SLURM_NODEID": "2",
    "SLURM_JOB_NODELIST": "gpu[07-09]",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No cluster variable from the machine running the tests."""
    for name in ALL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


NODELISTS = [
    ("node1", ["node1"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("a[8-11]", ["a8", "a9", "a10", "a11"]),
    ("a[08-11]", ["a08", "a09", "a10", "a11"]),
    ("a[1],b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("n[1-2].example.org", ["n1.example.org", "n2.example.org"]),
    ("10.0.0.[1-2]", ["10.0.0.1", "10.0.0.2"]),
    (" n1 , n2 ", ["n1", "n2"]),
]


@pytest.mark.parametrize(("nodelist", "hosts"), NODELISTS)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


BAD_NODELISTS = [
    ("", "names no host"),
    ("node[1-2", "unbalanced brackets"),
    ("node1-2]", "unbalanced brackets"),
    ("a[[1]]", "unbalanced brackets"),
    ("node[3-1]", "goes downwards"),
    ("node[a-b]", "'a-b' is not a number or range"),
    ("node[]", "'' is not a number or range"),
]


@pytest.mark.parametrize(("nodelist", "message"), BAD_NODELISTS)
def test_expand_nodelist_rejects(nodelist: str, message: str) -> None:
    pattern = f"invalid node list {re.escape(repr(nodelist))}: .*{re.escape(message)}"
    with pytest.raises(ValueError, match=pattern):
        expand_nodelist(nodelist)


DETECTED: list[tuple[str, dict[str, str], set[str], dict[str, Any]]] = [
    ("nothing", {}, set(), {}),
    (
        "slurm",
        SLURM,
        set(),
        {
            "nnodes": "3",
            "node_rank": 2,
            "master_addr": "gpu07",
            "master_port": 15000 + 4242,
            "rdzv_id": "4242",
        },
    ),
    (
        "slurm long job id keeps four digits for the port",
        {**SLURM, "SLURM_JOB_ID": "1234567"},
        set(),
        {"master_port": 15000 + 4567, "rdzv_id": "1234567"},
    ),
    (
        "slurm aliases",
        {
            "SLURM_JOB_ID": "7",
            "SLURM_STEPID": "3",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "a[1-2],b3",
        },
        set(),
        {"nnodes": "2", "node_rank": 0, "master_addr": "a1", "master_port": 15007},
    ),
    (
        "slurm single node keeps a free port",
        {**SLURM, "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "n1"},
        set(),
        {"nnodes": "1", "node_rank": 0, "master_addr": "n1", "rdzv_id": "4242"},
    ),
    (
        "slurm without a step (no SLURM_NODEID) is ignored",
        {k: v for k, v in SLURM.items() if k != "SLURM_NODEID"},
        set(),
        {},
    ),
    (
        "slurm batch script or salloc shell (no SLURM_STEP_ID) is ignored",
        {k: v for k, v in SLURM.items() if k != "SLURM_STEP_ID"},
        set(),
        {},
    ),
    (
        "a step on some of the job's nodes counts the step's nodes",
        {**SLURM, "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "gpu[08-09]"},
        set(),
        {"nnodes": "2", "master_addr": "gpu08"},
    ),
    (
        "explicit arguments win over slurm",
        SLURM,
        {"nnodes", "master_addr", "rdzv_id"},
        {"node_rank": 2, "master_port": 19242},
    ),
    (
        "torchrun style",
        {
            "PET_MASTER_ADDR": "10.1.1.1",
            "PET_MASTER_PORT": "29500",
            "PET_NNODES": "4",
            "PET_NODE_RANK": "3",
        },
        set(),
        {"nnodes": "4", "node_rank": 3, "master_addr": "10.1.1.1", "master_port": 29500},
    ),
    (
        "plain variables are never read (torchrun ignores them too)",
        {
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1",
            "NNODES": "2",
            "NODE_RANK": "1",
        },
        set(),
        {},
    ),
    ("elastic PET_NNODES", {"PET_NNODES": "1:4"}, set(), {"nnodes": "1:4"}),
    (
        "torchrun's own PET_ variables are read, the plain ones not",
        {"PET_NNODES": "2", "NNODES": "5", "PET_MASTER_ADDR": "h0", "MASTER_ADDR": "h9"},
        set(),
        {"nnodes": "2", "master_addr": "h0"},
    ),
    (
        "an elastic PyTorchJob's rendezvous",
        {
            "PET_NNODES": "1:3",
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": "job-0:29400",
            "PET_RDZV_ID": "exp",
            "PET_RDZV_CONF": "timeout=60",
        },
        set(),
        {
            "nnodes": "1:3",
            "rdzv_backend": "c10d",
            "rdzv_endpoint": "job-0:29400",
            "rdzv_id": "exp",
            "rdzv_configs": "timeout=60",
        },
    ),
    ("an empty PET_RDZV_CONF is no setting", {"PET_RDZV_CONF": ""}, set(), {}),
    (
        "torchrun style wins over slurm",
        {**SLURM, "PET_MASTER_ADDR": "head", "PET_MASTER_PORT": "29400"},
        set(),
        {"master_addr": "head", "master_port": 29400, "nnodes": "3", "node_rank": 2},
    ),
    (
        "explicit arguments win over torchrun style",
        {"PET_MASTER_ADDR": "10.1.1.1", "PET_MASTER_PORT": "29500"},
        {"master_port"},
        {"master_addr": "10.1.1.1"},
    ),
    (
        "inside a worker nothing is detected",
        {**SLURM, "PET_MASTER_ADDR": "a", "PET_NNODES": "4", "LOCAL_RANK": "0"},
        set(),
        {},
    ),
    (
        "inside an elastic worker nothing is detected",
        {"PET_MASTER_PORT": "1234", "TORCHELASTIC_RUN_ID": "x"},
        set(),
        {},
    ),
    (
        "a bad variable that is not needed is not read",
        {"PET_MASTER_PORT": "nope", "PET_NODE_RANK": "1"},
        {"master_port"},
        {"node_rank": 1},
    ),
]


@pytest.mark.parametrize(
    ("env", "given", "expected"),
    [case[1:] for case in DETECTED],
    ids=[case[0] for case in DETECTED],
)
def test_detect(env: dict[str, str], given: set[str], expected: dict[str, Any]) -> None:
    found = {param: value for param, (_, value) in detect(env, given).items()}
    assert {k: found.get(k) for k in expected} == expected
    assert not set(found) & given
    if not expected:
        assert found == {}


BAD_VARIABLES = [
    ({"PET_MASTER_PORT": "http"}, "PET_MASTER_PORT='http': must be a TCP port"),
    ({"PET_MASTER_PORT": "70000"}, "PET_MASTER_PORT='70000': must be a TCP port 1-65535"),
    ({"PET_NODE_RANK": "-1"}, "PET_NODE_RANK='-1': must be an integer >= 0"),
    ({"PET_NNODES": "two"}, "PET_NNODES='two': must be a node count N or MIN:MAX"),
    ({"PET_NNODES": "0"}, "PET_NNODES='0': must be a node count"),
    ({"PET_MASTER_ADDR": " "}, "PET_MASTER_ADDR=' ': must not be empty"),
    ({**SLURM, "SLURM_JOB_NODELIST": "n[2-1]"}, "SLURM_JOB_NODELIST='n\\[2-1\\]': .*downwards"),
    ({**SLURM, "SLURM_NODEID": "x"}, "SLURM_NODEID='x': must be an integer"),
]


@pytest.mark.parametrize(("env", "message"), BAD_VARIABLES)
def test_bad_variable_names_itself_and_the_way_out(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=f"invalid environment variable {message}") as info:
        detect(env)
    assert "pass the launcher argument explicitly" in str(info.value)


def test_fill_logs_what_it_found(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="icelaunch._cluster"):
        filled = fill({"nnodes": "1:1", "node_rank": 7}, {"node_rank"}, SLURM)
    assert filled["node_rank"] == 7
    assert filled["nnodes"] == "3"
    (record,) = caplog.records
    message = record.getMessage()
    assert "SLURM job 4242 environment detected" in message
    assert "nnodes='3' (from SLURM_NNODES)" in message
    assert "master_addr='gpu07' (from SLURM_JOB_NODELIST)" in message
    assert "explicit arguments kept: node_rank" in message


def test_fill_warns_when_the_environment_makes_a_launch_multi_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"PET_NNODES": "2", "PET_MASTER_ADDR": "10.0.0.1"}
    with caplog.at_level(logging.INFO, logger="icelaunch._cluster"):
        fill({"nnodes": "1:1"}, set(), env)
        fill({"nnodes": "1:1"}, set(), {"PET_NNODES": "1", "PET_MASTER_ADDR": "10.0.0.1"})
    multi, single = caplog.records
    assert multi.levelno == logging.WARNING
    assert "PET_NNODES" in multi.getMessage() and "PET_MASTER_ADDR" in multi.getMessage()
    assert "waits for the other nodes" in multi.getMessage()
    assert single.levelno == logging.INFO


def test_stray_plain_variables_do_not_change_a_launch(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "10.9.9.9",
        "MASTER_PORT": "29999",
        "NNODES": "2",
        "NODE_RANK": "1",
    }.items():
        clean_env.setenv(name, value)
    spec = ElasticLauncher("cpu").freeze().spec
    assert (spec.min_nodes, spec.max_nodes, spec.node_rank) == (1, 1, 0)
    assert (spec.master_addr, spec.master_port) == ("127.0.0.1", None)


def test_fill_without_environment_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="icelaunch._cluster"):
        assert fill({"nnodes": "1:1"}, set(), {"PATH": "/bin"}) == {"nnodes": "1:1"}
    assert caplog.records == []


def test_freeze_fills_defaults_from_slurm(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in SLURM.items():
        clean_env.setenv(name, value)
    before = dict(os.environ)
    spec = ElasticLauncher("cpu").freeze().spec
    assert os.environ == before  # read, never written
    assert (spec.min_nodes, spec.max_nodes, spec.node_rank) == (3, 3, 2)
    assert (spec.master_addr, spec.master_port, spec.rdzv_id) == ("gpu07", 19242, "4242")


def test_freeze_keeps_explicit_arguments(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PET_MASTER_ADDR", "10.9.9.9")
    clean_env.setenv("PET_MASTER_PORT", "29999")
    clean_env.setenv("PET_NNODES", "2")
    clean_env.setenv("PET_NODE_RANK", "1")
    launcher = ElasticLauncher("cpu", nnodes="1", master_port=None, node_rank=0)
    spec = launcher.freeze().spec
    assert (spec.max_nodes, spec.node_rank, spec.master_port) == (1, 0, None)
    assert spec.master_addr == "10.9.9.9"
    assert launcher["master_addr"] == "127.0.0.1"  # recorded arguments are not rewritten


def test_freeze_without_cluster_environment_keeps_defaults(clean_env: pytest.MonkeyPatch) -> None:
    spec = ElasticLauncher("cpu").freeze().spec
    assert (spec.min_nodes, spec.max_nodes, spec.node_rank) == (1, 1, 0)
    assert (spec.master_addr, spec.master_port, spec.rdzv_id) == ("127.0.0.1", None, "none")


def test_freeze_reports_a_bad_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("PET_NODE_RANK", "first")
    with pytest.raises(ValueError, match="invalid environment variable PET_NODE_RANK='first'"):
        ElasticLauncher("cpu").freeze()
    ElasticLauncher("cpu", node_rank=0).freeze()  # the explicit argument needs no variable
