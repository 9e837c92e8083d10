"""Cluster environments: fill arguments left at their defaults from SLURM or torchrun variables.

Pure data: the environment is read, never written. Only what torchrun itself
reads counts: its options' environment forms (``PET_NNODES``, ...), which win
over values derived from SLURM's, and SLURM's only inside a job step (``srun``).
Plain ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``NNODES`` and
``NODE_RANK`` are never read: left over in a shell, a notebook server or a
parent launcher, they must not change a launch. Inside a worker (``LOCAL_RANK``
or ``TORCHELASTIC_RUN_ID`` set) nothing is detected, since those variables then
describe the worker, not the node.

>>> expand_nodelist("node[01-03,07]")
['node01', 'node02', 'node03', 'node07']
>>> fill({}, set(), {"PET_MASTER_ADDR": "10.0.0.1", "PET_NODE_RANK": "1", "PET_NNODES": "2"})
{'nnodes': '2', 'node_rank': 1, 'master_addr': '10.0.0.1'}
>>> fill({}, set(), {"WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1"})
{}
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from icelaunch._spec import parse_nnodes

logger = logging.getLogger(__name__)

SLURM_PORT_BASE = 15000
_WORKER_VARIABLES = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_Parse = Callable[[Mapping[str, str], str], Any]


def _text(env: Mapping[str, str], name: str) -> str:
    text = env[name].strip()
    if not text:
        raise _bad_variable(name, env[name], "must not be empty", "10.0.0.1")
    return text


def _optional_text(env: Mapping[str, str], name: str) -> str | None:
    return env[name].strip() or None


def _count(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not text.isdigit():
        raise _bad_variable(name, env[name], "must be an integer >= 0", "1")
    return int(text)


def _nnodes(env: Mapping[str, str], name: str) -> str:
    text = env[name].strip()
    try:
        parse_nnodes(text)
    except ValueError:
        raise _bad_variable(name, env[name], "must be a node count N or MIN:MAX", "2") from None
    return text


def _port(env: Mapping[str, str], name: str) -> int:
    text = env[name].strip()
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _bad_variable(name, env[name], "must be a TCP port 1-65535", "29500")
    return int(text)


def _first_host(env: Mapping[str, str], name: str) -> str:
    try:
        return expand_nodelist(env[name])[0]
    except ValueError as exc:
        raise _bad_variable(name, env[name], str(exc), "node[01-04]") from None


def _slurm_port(env: Mapping[str, str], name: str) -> int | None:
    """A port every node of a multi-node job derives alike from the job id (as Lightning does).

    A single-node job keeps ``None``: a free port, so job steps sharing a node do not collide.
    """
    digits = env[name].strip()
    nodes = env.get(_first_set(env, _SLURM_NNODES) or "", "").strip()
    if not digits.isdigit() or not nodes.isdigit() or int(nodes) <= 1:
        return None
    return SLURM_PORT_BASE + int(digits[-4:])


def _bad_variable(name: str, value: str, rule: str, example: str) -> ValueError:
    return ValueError(
        f"invalid environment variable {name}={value!r}: {rule}, e.g. {name}={example}; "
        f"fix or unset it, or pass the launcher argument explicitly (explicit arguments win)"
    )


@dataclass(frozen=True)
class _Field:
    """One launcher parameter and the variables that can give it, first set wins."""

    param: str
    variables: tuple[str, ...]
    parse: _Parse


_SLURM_NNODES = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES")
_SLURM_NODELIST = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
_SLURM_STEP = ("SLURM_STEP_ID", "SLURM_STEPID")  # set by srun, not in a batch script or salloc
_SLURM_REQUIRED = (
    ("SLURM_JOB_ID",),
    _SLURM_STEP,
    _SLURM_NNODES,
    ("SLURM_NODEID",),
    _SLURM_NODELIST,
)

SLURM_FIELDS = (
    _Field("nnodes", _SLURM_NNODES, _nnodes),
    _Field("node_rank", ("SLURM_NODEID",), _count),
    _Field("master_addr", _SLURM_NODELIST, _first_host),
    _Field("master_port", ("SLURM_JOB_ID",), _slurm_port),
    _Field("rdzv_id", ("SLURM_JOB_ID",), _text),
)
# PET_* are the variables torchrun itself reads as defaults of its options (Kubeflow's
# PyTorchJob sets them); only those that place this node in a job are read here.
TORCHRUN_FIELDS = (
    _Field("nnodes", ("PET_NNODES",), _nnodes),
    _Field("node_rank", ("PET_NODE_RANK",), _count),
    _Field("master_addr", ("PET_MASTER_ADDR",), _text),
    _Field("master_port", ("PET_MASTER_PORT",), _port),
    _Field("rdzv_backend", ("PET_RDZV_BACKEND",), _optional_text),
    _Field("rdzv_endpoint", ("PET_RDZV_ENDPOINT",), _optional_text),
    _Field("rdzv_id", ("PET_RDZV_ID",), _optional_text),
    _Field("rdzv_configs", ("PET_RDZV_CONF",), _optional_text),
)


def _first_set(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in env), None)


def _read(
    fields: tuple[_Field, ...], env: Mapping[str, str], skip: Collection[str]
) -> dict[str, tuple[str, Any]]:
    """``{param: (variable, value)}`` for the fields whose variables are set."""
    found: dict[str, tuple[str, Any]] = {}
    for field in fields:
        name = _first_set(env, field.variables)
        if field.param in skip or name is None:
            continue
        value = field.parse(env, name)
        if value is not None:
            found[field.param] = (name, value)
    return found


def _in_slurm_step(env: Mapping[str, str]) -> bool:
    return all(_first_set(env, names) for names in _SLURM_REQUIRED)


def detect(env: Mapping[str, str], given: Collection[str] = ()) -> dict[str, tuple[str, Any]]:
    """``{param: (variable, value)}`` from the environment, for parameters not in ``given``.

    Raises:
        ValueError: a variable that is needed has an invalid value (the message names it).
    """
    if any(name in env for name in _WORKER_VARIABLES):
        return {}
    found = _read(SLURM_FIELDS, env, given) if _in_slurm_step(env) else {}
    found.update(_read(TORCHRUN_FIELDS, env, given))
    return found


def fill(
    arguments: dict[str, Any], given: Collection[str], env: Mapping[str, str]
) -> dict[str, Any]:
    """``arguments`` with the parameters not in ``given`` filled from ``env``; logs what it found.

    Raises:
        ValueError: a variable that is needed has an invalid value (the message names it).
    """
    found = detect(env, given)
    if found:
        where = f"SLURM job {env['SLURM_JOB_ID']}" if _in_slurm_step(env) else "torchrun (PET_*)"
        shown = ", ".join(f"{p}={v!r} (from {var})" for p, (var, v) in found.items())
        kept = sorted(set(given) & {f.param for f in SLURM_FIELDS + TORCHRUN_FIELDS})
        multi_node = "nnodes" in found and parse_nnodes(found["nnodes"][1])[1] > 1
        logger.log(
            logging.WARNING if multi_node else logging.INFO,
            "icelaunch: %s environment detected%s: %s%s",
            where,
            "; this launch waits for the other nodes" if multi_node else "",
            shown,
            f"; explicit arguments kept: {', '.join(kept)}" if kept else "",
        )
    return {**arguments, **{param: value for param, (_, value) in found.items()}}


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list as host names, in order.

    >>> expand_nodelist("a[1-2],b3")
    ['a1', 'a2', 'b3']
    >>> expand_nodelist("rack[1-2]-n[08-09]")
    ['rack1-n08', 'rack1-n09', 'rack2-n08', 'rack2-n09']

    Raises:
        ValueError: ``nodelist`` is not a valid host list (the message quotes it).
    """
    hosts = [h for item in _split_top_level(nodelist) for h in _expand_item(item, nodelist)]
    if not hosts:
        raise ValueError(f"invalid node list {nodelist!r}: it names no host, e.g. 'node[01-04]'")
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    """Split on the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"invalid node list {nodelist!r}: unbalanced brackets")
        if char == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"invalid node list {nodelist!r}: unbalanced brackets")
    items.append(nodelist[start:])
    return [item.strip() for item in items if item.strip()]


def _expand_item(item: str, nodelist: str) -> list[str]:
    """``'rack[1-2]-n[08-09]'`` -> every combination, first bracket slowest."""
    head, bracket, rest = item.partition("[")
    if not bracket:
        if "]" in head:
            raise ValueError(f"invalid node list {nodelist!r}: unbalanced brackets")
        return [head]
    inner, _, tail = rest.partition("]")
    return [
        f"{head}{n}{t}"
        for n in _expand_ranges(inner, nodelist)
        for t in _expand_item(tail, nodelist)
    ]


def _expand_ranges(inner: str, nodelist: str) -> list[str]:
    """``'01-03,7'`` -> ['01', '02', '03', '7'] (a range keeps its first number's width)."""
    numbers: list[str] = []
    for part in inner.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError(
                f"invalid node list {nodelist!r}: {part!r} is not a number or range, "
                f"e.g. 'node[01-03,07]'"
            )
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"invalid node list {nodelist!r}: range {part!r} goes downwards")
        numbers.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return numbers
