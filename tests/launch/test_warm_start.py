"""The warm fork server behind start_method="spawn": fast, and still spawn's guarantees."""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import pytest
import torch

from icelaunch import ElasticLauncher

pytestmark = pytest.mark.timeout(120)


def describe(launcher: ElasticLauncher, module_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    return {
        "value": module.VALUE,
        "env": os.environ.get("ICELAUNCH_TEST_FLAG"),
        "cwd": os.getcwd(),
        "cuda_initialized": torch.cuda.is_initialized(),
        "threads": len([t for t in threading.enumerate() if not t.name.startswith("icelaunch")]),
    }


def test_workers_see_current_environment_cwd_and_module_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "user_module_for_warm_test.py"
    module.write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    first = launcher(describe, launcher, module.stem)
    assert {r["value"] for r in first.values()} == {1}

    # Between launches the user edits the module and the environment and moves:
    # workers must see all of it, as freshly spawned ones would.
    module.write_text("VALUE = 2\n")
    monkeypatch.setenv("ICELAUNCH_TEST_FLAG", "changed")
    monkeypatch.chdir(tmp_path)
    second = launcher(describe, launcher, module.stem)
    for info in second.values():
        assert info["value"] == 2
        assert info["env"] == "changed"
        assert info["cwd"] == str(tmp_path)
        assert info["cuda_initialized"] is False
        assert info["threads"] == 1  # none of the launcher's threads


def test_cold_start_still_available(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cold_module_for_warm_test.py").write_text("VALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    launcher = ElasticLauncher("cpu:0-1", warm_start=False, monitor_interval=0.5).freeze()
    results = launcher(describe, launcher, "cold_module_for_warm_test")
    assert [r["value"] for r in results.values()] == [3, 3]
