"""A CUDA tensor a rank returns comes back on the launcher's number for the same GPU.

torch pickles a CUDA tensor with its device as the rank sees it (``cuda:0`` for
a rank on GPU 4 under narrowing), and the launcher would restore it on its own
``cuda:0``. While a rank's value is pickled, a location tagger registered with
torch's public ``torch.serialization.register_package`` (ahead of torch's own
CUDA tagger, inert at every other time) writes the launcher's number instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from icelaunch._placement._plan import gpus_seen
from icelaunch._spec import LaunchSpec

_PRIORITY = 15  # after torch's CPU tagger (10), before its CUDA one (20)
_numbering: tuple[int, ...] | None = None  # rank's GPU index -> the launcher's
_registered = False


def launcher_tag(storage: Any) -> str | None:
    """The launcher's location of a CUDA storage while a value is pickled; else None
    (torch's own taggers decide)."""
    device = getattr(storage, "device", None)
    if _numbering is None or device is None or device.type != "cuda":
        return None
    return f"cuda:{_numbering[device.index or 0]}"


def _no_restore(storage: Any, location: str) -> None:
    """Loading is left to torch's own deserializers."""
    return None


@contextlib.contextmanager
def in_launcher_numbering(spec: LaunchSpec, local_rank: int) -> Iterator[None]:
    """Inside the block, CUDA tensors pickle with the launcher's device numbers."""
    global _numbering, _registered
    seen = gpus_seen(spec, local_rank)
    if seen is None:
        yield
        return
    if not _registered:
        import torch.serialization

        torch.serialization.register_package(_PRIORITY, launcher_tag, _no_restore)
        _registered = True
    _numbering = seen
    try:
        yield
    finally:
        _numbering = None
