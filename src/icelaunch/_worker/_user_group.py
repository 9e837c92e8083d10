"""Process groups that launched functions set up themselves (``process_group=False``).

They get torchrun's ``env://`` variables unchanged. One thing is fixed: with the
static rendezvous every attempt shares the agent's store (``TORCHELASTIC_USE_AGENT_STORE``),
and torch's ``env://`` handler adds no per-attempt prefix, so after a restart a
fast rank could read a dead peer's address from the previous attempt and fail to
connect. The worker's ``env://`` handler is wrapped to add that prefix.

This reaches into torch's private handler registry (``_rendezvous_handlers``),
through ``_torch_internals``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from icelaunch import _rundir, _torch_internals

_ENV = "env"


def prefix_env_rendezvous(restart_count: int) -> None:
    """Make ``init_process_group(init_method="env://")`` in this worker use a store
    of its own attempt; nothing to do on the first attempt or without the agent's store."""
    if restart_count == 0 or not _rundir.uses_agent_store(os.environ):
        return
    handlers = _torch_internals.env_handlers()
    handlers[_ENV] = _prefixed(handlers[_ENV], f"/icelaunch/attempt_{restart_count}")


def _prefixed(handler: Callable[..., Iterator[Any]], prefix: str) -> Callable[..., Iterator[Any]]:
    from torch.distributed import PrefixStore  # type: ignore[attr-defined]

    def env_handler(url: str, **kwargs: Any) -> Iterator[Any]:
        for store, rank, world_size in handler(url, **kwargs):
            yield PrefixStore(prefix, store), rank, world_size

    return env_handler
