"""Checks before a launch: fork after CUDA, and ``__main__.__file__`` during a launch."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from icelaunch import ElasticLauncher, _preflight


def _cuda_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_other_start_methods_do_not_care_about_cuda(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cuda_initialised(monkeypatch)
    _preflight.check_fork_after_cuda(start_method)


def test_fork_is_fine_before_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    _preflight.check_fork_after_cuda("fork")
    monkeypatch.delitem(sys.modules, "torch")  # never imported: CUDA cannot be initialised
    _preflight.check_fork_after_cuda("fork")


def _fake_main(monkeypatch: pytest.MonkeyPatch, file: str) -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__file__ = file
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_main_file_read_from_stdin_is_hidden_during_the_launch_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    main = _fake_main(monkeypatch, "<stdin>")
    with pytest.raises(KeyError), _preflight.prepared(_spec()):
        assert not hasattr(main, "__file__")
        raise KeyError("the launch failed")
    assert main.__file__ == "<stdin>"


def test_main_file_that_exists_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    main = _fake_main(monkeypatch, __file__)
    with _preflight.prepared(_spec()):
        assert main.__file__ == __file__


def _spec() -> Any:
    return ElasticLauncher("cpu:0-1").freeze().spec
