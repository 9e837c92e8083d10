"""Usage errors end at once with one clear line: no hang, no traceback, nothing left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from icelaunch import ElasticLauncher
from icelaunch._engine._ports import AGREED_RANGE, agreed_port

pytestmark = pytest.mark.timeout(120)


def test_standalone_with_several_nodes_is_refused_at_freeze() -> None:
    with pytest.raises(ValueError, match=r"invalid nnodes '2' with standalone=True.*c10d"):
        ElasticLauncher(standalone=True, nnodes="2").freeze()
    with pytest.raises(ValueError, match=r"invalid nnodes '1:2' with standalone=True"):
        ElasticLauncher(standalone=True, nnodes="1:2").freeze()
    ElasticLauncher(standalone=True, nnodes="1").freeze()


def test_static_nodes_without_master_port_agree_on_one() -> None:
    """Every node derives the same port from what they are all given alike."""
    nodes = [
        ElasticLauncher("cpu", nnodes="2", node_rank=r, master_addr="10.0.0.1").freeze().spec
        for r in (0, 1)
    ]
    ports = {agreed_port(spec) for spec in nodes}
    assert len(ports) == 1
    port = ports.pop()
    assert port is not None and AGREED_RANGE[0] <= port <= AGREED_RANGE[1]
    assert agreed_port(ElasticLauncher("cpu").freeze().spec) is None
    assert agreed_port(ElasticLauncher("cpu", nnodes="2", master_port=29600).freeze().spec)


def test_a_log_dir_that_cannot_be_created_names_it() -> None:
    launcher = ElasticLauncher("cpu", log_dir="/proc/no/such/logs").freeze()
    with pytest.raises(ValueError, match=r"invalid log_dir '/proc/no/such/logs': cannot create"):
        launcher(print)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--log-dir", "/proc/x/logs", "SCRIPT"], "invalid log_dir '/proc/x/logs'"),
        (["--no-python", "/nonexistent/bin"], "program '/nonexistent/bin' not found"),
        (["--standalone", "--nnodes", "2", "SCRIPT"], "invalid nnodes '2' with standalone=True"),
    ],
    ids=["log-dir", "no-python", "standalone-nnodes"],
)
def test_command_usage_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print('ok')\n")
    argv = [sys.executable, "-m", "icelaunch", "--devices", "cpu:0-1"]
    argv += [str(script) if a == "SCRIPT" else a for a in args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "ok" not in result.stdout
