"""Device-spec grammar: parse (pure string work), then resolve (asks torch).

Grammar::

    spec   := type | type ":*" | type ":" list
    type   := "auto" | "cpu" | "cuda"
    list   := item ("," item)*
    item   := INDEX | INDEX "-" INDEX          (inclusive, upwards)

One worker per listed device. ``auto`` is ``cuda`` when CUDA is available,
else ``cpu``; ``cpu:*`` is one worker per CPU core.

>>> parse_device_spec("cuda:0-2,7")
DeviceRequest(kind='cuda', indices=(0, 1, 2, 7), every=False)
>>> parse_device_spec("cpu")
DeviceRequest(kind='cpu', indices=None, every=False)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

KINDS = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "nccl", "gloo", "mpi")
VALID_FORMS = (
    "'auto', 'cpu', 'cuda', 'cuda:0', 'cuda:*', 'auto:*', 'cuda:1,3', 'cuda:0-2,7', 'cpu:0-3'"
)
_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed device spec: the kind, the listed indices, or every device (``*``)."""

    kind: str
    indices: tuple[int, ...] | None
    every: bool


def _invalid(spec: object, rule: str) -> ValueError:
    return ValueError(f"invalid devices {spec!r}: {rule}; valid forms: {VALID_FORMS}")


def parse_device_spec(spec: str) -> DeviceRequest:
    """Parse a device spec string without asking torch anything.

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: ``spec`` does not follow the grammar.
    """
    if not isinstance(spec, str):
        raise TypeError(f"devices must be a string such as 'cuda:0-2,7', not {spec!r}")
    kind, sep, rest = spec.strip().partition(":")
    if kind not in KINDS:
        raise _invalid(spec, f"the device type must be one of {', '.join(KINDS)}")
    if not sep:
        return DeviceRequest(kind, None, False)
    if rest == "*":
        return DeviceRequest(kind, None, True)
    if not rest:
        raise _invalid(
            spec, "a ':' must be followed by '*' or a list of indices, e.g. 'cuda:0-2,7'"
        )
    return DeviceRequest(kind, _parse_list(spec, rest), False)


def _parse_list(spec: str, text: str) -> tuple[int, ...]:
    indices: list[int] = []
    for item in text.split(","):
        match = _ITEM.match(item.strip())
        if match is None:
            raise _invalid(spec, f"{item!r} is not an index or a range of indices, e.g. '0', '0-2'")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise _invalid(spec, f"a range must go upwards, e.g. '{last}-{first}' not '{item}'")
        indices.extend(range(first, last + 1))
    return tuple(indices)


def cuda_device_count() -> int:
    """Number of visible CUDA devices (0 without CUDA); tests replace this."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def numa_strategies() -> tuple[str, ...]:
    """torch's NUMA binding strategies (``torch.numa.binding.AffinityMode``); empty
    where the installed torch has none. Tests replace this."""
    try:
        from torch.numa.binding import AffinityMode
    except ImportError:
        return ()
    return tuple(mode.value for mode in AffinityMode)


def cpu_count() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_devices(spec: str, request: DeviceRequest, ncuda: int) -> list[str]:
    """Turn a parsed request into one device name per worker (``'cpu'``, ``'cuda:3'``).

    Args:
        spec: the original spec, quoted in errors.
        request: the parsed spec.
        ncuda: number of CUDA devices on this machine.
    """
    kind = request.kind
    if kind == "auto":
        kind = "cuda" if ncuda > 0 else "cpu"
    if kind == "cpu":
        count = cpu_count() if request.every else len(request.indices or (0,))
        return ["cpu"] * count
    if ncuda == 0:
        raise _invalid(spec, "CUDA is not available on this machine; use 'cpu' or 'cpu:0-3'")
    indices = tuple(range(ncuda)) if request.every else request.indices or (0,)
    beyond = [i for i in indices if i >= ncuda]
    if beyond:
        raise _invalid(
            spec,
            f"device index {beyond[0]} is past the {ncuda} visible CUDA device(s) "
            f"(valid indices 0-{ncuda - 1})",
        )
    return [f"cuda:{i}" for i in indices]


def choose_backend(spec: str, devices: list[str], dist_backend: str) -> str:
    """Pick or check the process-group backend for ``devices``.

    ``auto`` is ``nccl`` for distinct CUDA devices, else ``gloo``.
    """
    if not isinstance(dist_backend, str) or dist_backend not in BACKENDS:
        raise ValueError(
            f"invalid dist_backend {dist_backend!r}: must be one of {', '.join(BACKENDS)}, "
            f"e.g. dist_backend='gloo'"
        )
    on_cuda = all(d.startswith("cuda") for d in devices)
    shared = len(set(devices)) < len(devices)
    if dist_backend == "auto":
        return "nccl" if on_cuda and not shared else "gloo"
    if dist_backend == "nccl" and not on_cuda:
        raise ValueError(
            f"invalid dist_backend 'nccl' for devices {spec!r}: nccl needs CUDA devices; "
            f"use dist_backend='gloo' for CPU workers"
        )
    if dist_backend == "nccl" and shared:
        raise ValueError(
            f"invalid dist_backend 'nccl' for devices {spec!r}: nccl cannot run two workers "
            f"on one GPU; list each device once (e.g. 'cuda:0,1') or use dist_backend='gloo'"
        )
    if dist_backend == "mpi" and not _mpi_available():
        raise ValueError(
            "invalid dist_backend 'mpi': this torch build has no MPI support; "
            "use dist_backend='gloo' or 'nccl'"
        )
    return dist_backend


def _mpi_available() -> bool:
    import torch.distributed as dist

    return bool(dist.is_mpi_available())


def visible_devices(
    request: DeviceRequest, devices: list[str], ncuda: int
) -> tuple[int, ...] | None:
    """The GPUs (the caller's indices) a node's workers see, in spec order; None when
    they see every GPU as the caller does.

    Only a ``cuda:`` list that is not every GPU in order narrows: ``cuda``, ``auto``
    and ``cuda:*`` leave the GPUs as they are (a single worker may use them all).
    A GPU listed twice is seen once.

    >>> visible_devices(parse_device_spec("cuda:3,1"), ["cuda:3", "cuda:1"], 8)
    (3, 1)
    >>> visible_devices(parse_device_spec("cuda:0-1"), ["cuda:0", "cuda:1"], 2) is None
    True
    """
    if request.indices is None or not devices or not devices[0].startswith("cuda"):
        return None
    order = tuple(dict.fromkeys(int(d.partition(":")[2]) for d in devices))
    return None if order == tuple(range(ncuda)) else order


def resolve_node(
    spec: str, dist_backend: str = "auto"
) -> tuple[list[str], str, tuple[int, ...] | None]:
    """Parse and resolve ``spec``: device names, the backend, and the GPUs the
    workers see (:func:`visible_devices`)."""
    request = parse_device_spec(spec)
    ncuda = cuda_device_count() if request.kind != "cpu" else 0
    devices = resolve_devices(spec, request, ncuda)
    backend = choose_backend(spec, devices, dist_backend)
    return devices, backend, visible_devices(request, devices, ncuda)


def resolve(spec: str, dist_backend: str = "auto") -> tuple[list[str], str]:
    """Parse and resolve ``spec``; returns device names and the backend."""
    devices, backend, _ = resolve_node(spec, dist_backend)
    return devices, backend


def parse_devices(spec: str, dist_backend: str = "auto") -> tuple[list[torch.device], str]:
    """Devices for one worker each and the process-group backend.

    Args:
        spec: device spec, e.g. ``'cuda:0-2,7'`` or ``'cpu:0-3'``.
        dist_backend: ``'auto'``, ``'nccl'``, ``'gloo'`` or ``'mpi'``.

    Raises:
        ValueError: the spec is malformed, asks for CUDA without CUDA, lists an
            index past the device count, or the backend does not fit.
    """
    import torch

    devices, backend = resolve(spec, dist_backend)
    return [torch.device(d) for d in devices], backend
