"""Imported once by the warm fork server, so every worker starts with these loaded.

Only libraries: nothing of the user's program, no CUDA initialisation. One hook:
workers of icelaunch hold what they write before attaching to the console relay
(``_console._early``).
"""

from __future__ import annotations

import cloudpickle  # noqa: F401  (unpickles jobs shipped by value)
import torch
import torch.distributed
import torch.distributed.elastic.multiprocessing.api  # noqa: F401  (torch's worker wrapper)

import icelaunch._worker  # noqa: F401
from icelaunch import _console

_console.wrap_spawn_main()  # output of the main module's re-import reaches the relay
