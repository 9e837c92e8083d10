"""The refusal to fork after CUDA comes from a real launch, before any worker."""

from __future__ import annotations

import pytest
import torch

from icelaunch import ElasticLauncher


def _cuda_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)


def test_fork_after_cuda_is_refused_before_any_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_initialised(monkeypatch)
    launcher = ElasticLauncher("cpu:0-1", start_method="fork").freeze()
    with pytest.raises(RuntimeError, match=r"start_method='fork' cannot be used.*'spawn'"):
        launcher(print, "never printed")
