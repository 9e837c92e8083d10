"""The examples' ``main`` called in the test process: real workers, same results."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cloudpickle
import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN_MLP = ROOT / "examples" / "train_mlp.py"


@pytest.fixture
def train_mlp() -> Iterator[ModuleType]:
    """``examples/train_mlp.py`` imported as a module, its functions shipped to workers by value."""
    spec = importlib.util.spec_from_file_location("icelaunch_example_train_mlp", TRAIN_MLP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        cloudpickle.register_pickle_by_value(module)
        yield module
    finally:
        with contextlib.suppress(ValueError):
            cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[spec.name]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_train_mlp_main_returns_the_summary(train_mlp: ModuleType) -> None:
    summary = train_mlp.main(["--devices", "cpu:0-1", "--epochs", "2", "--samples", "4096"])
    assert summary["workers"] == 2
    assert summary["devices"] == "cpu:0-1"
    assert math.isfinite(summary["loss"])
    assert summary["accuracy"] >= max(0.8, 3 * summary["chance"])
    assert summary["samples_per_s"] > 0
