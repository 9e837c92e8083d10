"""LaunchSpec: the validated, immutable result of freezing an ElasticLauncher.

Every check here is pure (no torch import, no environment change) except the
device count that :func:`icelaunch._devices.resolve` asks torch for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

from icelaunch import _devices
from icelaunch._rundir import PREFIX_TEMPLATE, check_template

RDZV_BACKENDS = ("static", "c10d", "etcd", "etcd-v2")
START_METHODS = ("spawn", "fork", "forkserver")
NUMERIC_RDZV_KEYS = (
    "timeout",
    "join_timeout",
    "last_call_timeout",
    "close_timeout",
    "heartbeat",
    "keep_alive_interval",
    "keep_alive_max_attempt",
    "read_timeout",
)
#: the largest time value in seconds (about 31 years): torch adds a collective timeout
#: to the wall clock in 64-bit nanoseconds, which end in 2262; past about 7e9 seconds
#: today every rank's first wait overflows (times out at once or never returns)
MAX_SECONDS = 1e9
#: the largest count or rank: torch holds ranks, world sizes and counts in C ints
MAX_INT = 2**31 - 1
#: the most OpenMP threads per worker: far past any machine's cores, below where
#: creating the threads fails (65536 per worker: "Resource temporarily unavailable")
MAX_OMP_THREADS = 4096
_STD = re.compile(r"^[0-3]$|^(\d+:[0-3])(,\d+:[0-3])*$")
_T = TypeVar("_T")
_RDZV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a launch needs, validated; one device name per local worker."""

    devices: tuple[str, ...]
    dist_backend: str
    min_nodes: int
    max_nodes: int
    rdzv_id: str
    rdzv_endpoint: str
    rdzv_backend: str
    rdzv_configs: tuple[tuple[str, str], ...]
    standalone: bool
    max_restarts: int
    monitor_interval: float
    start_method: str
    redirects: str
    tee: str
    log_dir: str | None
    role: str
    node_rank: int
    master_addr: str
    master_port: int | None
    omp_num_threads: int
    warm_start: bool = True
    local_ranks_filter: tuple[int, ...] | None = None
    log_line_prefix_template: str = PREFIX_TEMPLATE
    timeout: float | None = None
    hang_timeout: float | None = None
    collective_timeout: float | None = None
    process_group: bool = True
    shutdown_timeout: float = 30.0
    numa_binding: str | None = None
    virtual_local_rank: bool = False
    report: str | None = None
    slow_rank: float | None = 30.0
    #: the GPUs (the caller's indices) this node's workers see, in order; None: all
    visible_devices: tuple[int, ...] | None = None

    @property
    def nproc_per_node(self) -> int:
        """Number of workers on this node."""
        return len(self.devices)


def _bad(name: str, value: object, rule: str, example: str) -> ValueError:
    return ValueError(f"invalid {name} {value!r}: {rule}, e.g. {name}={example}")


def _require_type(name: str, value: object, kinds: tuple[type, ...], example: str) -> None:
    if isinstance(value, bool) and bool not in kinds:
        raise TypeError(f"{name} must be {kinds[0].__name__}, not {value!r}; e.g. {name}={example}")
    if not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{name} must be {wanted}, not {value!r}; e.g. {name}={example}")


def _typed(name: str, value: object, kind: type[_T], example: str) -> _T:
    """``value`` if it is a ``kind`` (bools are not ints here), else TypeError."""
    _require_type(name, value, (kind,), example)
    return cast(_T, value)


def _int(name: str, value: object, minimum: int, example: str, maximum: int = MAX_INT) -> int:
    value = _typed(name, value, int, example)
    if not minimum <= value <= maximum:
        raise _bad(name, value, f"must be an integer >= {minimum}, at most {maximum}", example)
    return value


def parse_nnodes(nnodes: object) -> tuple[int, int]:
    """``'2'`` -> (2, 2); ``'1:4'`` -> (1, 4)."""
    example = "'2' or nnodes='1:4'"
    if isinstance(nnodes, int) and not isinstance(nnodes, bool):
        nnodes = str(nnodes)
    nnodes = _typed("nnodes", nnodes, str, example)
    parts = nnodes.strip().split(":")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise _bad("nnodes", nnodes, "must be a node count N or a range MIN:MAX", example)
    low, high = int(parts[0]), int(parts[-1])
    if low < 1 or high < low or high > MAX_INT:
        raise _bad("nnodes", nnodes, f"needs 1 <= MIN <= MAX <= {MAX_INT}", example)
    return low, high


def parse_rdzv_configs(configs: object) -> tuple[tuple[str, str], ...]:
    """``'timeout=60,join_timeout=30'`` -> (('timeout', '60'), ('join_timeout', '30'))."""
    example = "'timeout=60,join_timeout=30'"
    configs = _typed("rdzv_configs", configs, str, example)
    pairs: list[tuple[str, str]] = []
    for item in filter(None, (p.strip() for p in configs.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not _RDZV_KEY.match(key) or not value:
            raise _bad("rdzv_configs", configs, f"{item!r} is not key=value", example)
        if key in NUMERIC_RDZV_KEYS and not (value.isdigit() and int(value) <= MAX_SECONDS):
            rule = (
                f"{key} must be a number of seconds, whole (torch reads it as an integer), "
                f"at most {MAX_SECONDS:.0f}"
            )
            raise _bad("rdzv_configs", configs, rule, example)
        if any(k == key for k, _ in pairs):
            raise _bad("rdzv_configs", configs, f"{key} is given twice", example)
        pairs.append((key, value))
    return tuple(pairs)


def _std(name: str, value: object) -> str:
    example = "'3' or '0:1,1:2'"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = _typed(name, value, str, example)
    if not _STD.match(value.strip()):
        rule = "must be 0-3 (0 none, 1 stdout, 2 stderr, 3 both) or local_rank:0-3 pairs"
        raise _bad(name, value, rule, example)
    return value.strip()


def _choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    text = _typed(name, value, str, repr(choices[0]))
    if text not in choices:
        raise _bad(name, value, f"must be one of {', '.join(choices)}", repr(choices[0]))
    return text


def _nonempty(name: str, value: object, example: str) -> str:
    value = _typed(name, value, str, example)
    if not value.strip():
        raise _bad(name, value, "must not be empty", example)
    return value.strip()


def _port(value: object) -> int | None:
    if value is None:
        return None
    _typed("master_port", value, int, "29500")
    if not 1 <= cast(int, value) <= 65535:
        raise _bad("master_port", value, "must be a TCP port 1-65535 or None", "29500")
    return cast(int, value)


def _interval(value: object) -> float:
    return _positive_seconds("monitor_interval", value, "5", "")


def _seconds(name: str, value: object, example: str) -> float | None:
    """A time limit: None (no limit) or a positive number of seconds up to ``MAX_SECONDS``.

    >>> _seconds("collective_timeout", 1e15, "600")
    Traceback (most recent call last):
    ValueError: invalid collective_timeout 1000000000000000.0: must be a positive number of \
seconds or None, at most 1e+09 (about 31 years), e.g. collective_timeout=600
    """
    if value is None:
        return None
    return _positive_seconds(name, value, example, " or None")


def _positive_seconds(name: str, value: object, example: str, or_none: str) -> float:
    _require_type(name, value, (int, float), example)
    try:
        seconds = float(cast(float, value))
    except OverflowError:  # an int past any float
        seconds = float("inf")
    if not 0 < seconds <= MAX_SECONDS:  # also nan
        rule = f"must be a positive number of seconds{or_none}, at most {MAX_SECONDS:.0e}"
        raise _bad(name, value, rule + " (about 31 years)", example)
    return seconds


def _grace(value: object) -> float:
    """``shutdown_timeout``: zero or a positive, finite number of seconds."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return _positive_seconds("shutdown_timeout", value, "120", " or zero")


#: the shortest slow-rank window: enough samples (every 0.5 s) for the rule to name a rank
MIN_SLOW_RANK_S = 5.0


def _slow_rank(value: object) -> float | None:
    """``slow_rank``: None (off) or a window of at least :data:`MIN_SLOW_RANK_S` seconds."""
    seconds = _seconds("slow_rank", value, "30")
    if seconds is not None and seconds < MIN_SLOW_RANK_S:
        rule = (
            f"must be at least {MIN_SLOW_RANK_S:g} seconds (the window in which the ranks are "
            f"sampled twice a second), or None to turn it off"
        )
        raise _bad("slow_rank", value, rule, "30")
    return seconds


def _report_path(value: object) -> str | None:
    """``report``: None or the path of a file to write (not a directory)."""
    if value is None:
        return None
    _require_type("report", value, (str, os.PathLike), "'run.json'")
    path = str(os.fspath(cast("str | os.PathLike[str]", value)))
    if not path.strip():
        raise _bad("report", value, "must be a file path or None", "'run.json'")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise _bad("report", value, "is a directory; it must name a file", "'run.json'")
    return path


def _log_dir(value: object) -> str | None:
    if value is None:
        return None
    _require_type("log_dir", value, (str, os.PathLike), "'/var/log/icelaunch'")
    path = os.fspath(cast("str | os.PathLike[str]", value))
    if not str(path).strip():
        raise _bad("log_dir", value, "must be a directory path or None", "'/tmp/logs'")
    if os.path.isfile(path):
        raise _bad("log_dir", value, "is a file; it must be a directory", "'/tmp/logs'")
    return str(path)


def _nnodes_text(spec: LaunchSpec) -> str:
    if spec.min_nodes == spec.max_nodes:
        return str(spec.max_nodes)
    return f"{spec.min_nodes}:{spec.max_nodes}"


def _check_rendezvous(spec: LaunchSpec) -> None:
    if spec.standalone and spec.max_nodes > 1:
        raise ValueError(
            f"invalid nnodes {_nnodes_text(spec)!r} with standalone=True: a standalone "
            f"rendezvous is private to this node; for several nodes drop standalone and use "
            f"e.g. rdzv_backend='c10d', rdzv_endpoint='10.0.0.1:29400' (or nnodes='1')"
        )
    if spec.rdzv_backend == "static" and spec.min_nodes != spec.max_nodes:
        raise _bad(
            "nnodes",
            f"{spec.min_nodes}:{spec.max_nodes}",
            "the static rendezvous needs a fixed node count; use rdzv_backend='c10d' for a range",
            "'2'",
        )
    if spec.max_nodes * spec.nproc_per_node > MAX_INT:
        rule = f"{spec.nproc_per_node} workers per node make a world size past {MAX_INT}"
        raise _bad("nnodes", _nnodes_text(spec), rule + " (torch's ranks are C ints)", "'2'")
    if spec.node_rank >= spec.max_nodes:
        raise _bad("node_rank", spec.node_rank, f"must be below nnodes ({spec.max_nodes})", "0")
    needs_endpoint = spec.rdzv_backend != "static" and not spec.standalone
    if needs_endpoint and not spec.rdzv_endpoint:
        raise _bad(
            "rdzv_endpoint",
            spec.rdzv_endpoint,
            f"rdzv_backend={spec.rdzv_backend!r} needs an endpoint host:port (or standalone=True)",
            "'10.0.0.1:29400'",
        )


def build_spec(arguments: dict[str, Any]) -> LaunchSpec:
    """Validate the seed's arguments (by name) into a LaunchSpec.

    Raises:
        ValueError: a value breaks its rule (the message quotes it).
        TypeError: a value has the wrong type.
    """
    a = arguments
    devices, backend, visible = _devices.resolve_node(a["devices"], a["dist_backend"])
    min_nodes, max_nodes = parse_nnodes(a["nnodes"])
    _require_type("standalone", a["standalone"], (bool,), "True")
    spec = LaunchSpec(
        devices=tuple(devices),
        dist_backend=backend,
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        rdzv_id=_nonempty("rdzv_id", a["rdzv_id"], "'job-42'"),
        rdzv_endpoint=_str("rdzv_endpoint", a["rdzv_endpoint"]),
        rdzv_backend=_choice("rdzv_backend", a["rdzv_backend"], RDZV_BACKENDS),
        rdzv_configs=parse_rdzv_configs(a["rdzv_configs"]),
        standalone=a["standalone"],
        max_restarts=_int("max_restarts", a["max_restarts"], 0, "1"),
        monitor_interval=_interval(a["monitor_interval"]),
        start_method=_choice("start_method", a["start_method"], START_METHODS),
        redirects=_std("redirects", a["redirects"]),
        tee=_std("tee", a["tee"]),
        log_dir=_log_dir(a["log_dir"]),
        role=_nonempty("role", a["role"], "'trainer'"),
        node_rank=_int("node_rank", a["node_rank"], 0, "0"),
        master_addr=_nonempty("master_addr", a["master_addr"], "'127.0.0.1'"),
        master_port=_port(a["master_port"]),
        omp_num_threads=_int("omp_num_threads", a["omp_num_threads"], 1, "1", MAX_OMP_THREADS),
        warm_start=_typed("warm_start", a.get("warm_start", True), bool, "False"),
        local_ranks_filter=parse_ranks_filter(a.get("local_ranks_filter"), len(devices)),
        log_line_prefix_template=check_template(a.get("log_line_prefix_template", PREFIX_TEMPLATE)),
        timeout=_seconds("timeout", a.get("timeout"), "3600"),
        hang_timeout=_seconds("hang_timeout", a.get("hang_timeout"), "300"),
        collective_timeout=_seconds("collective_timeout", a.get("collective_timeout"), "600"),
        process_group=_typed("process_group", a.get("process_group", True), bool, "False"),
        shutdown_timeout=_grace(a.get("shutdown_timeout", 30.0)),
        numa_binding=_numa_binding(a.get("numa_binding"), a["devices"], devices),
        virtual_local_rank=_typed(
            "virtual_local_rank", a.get("virtual_local_rank", False), bool, "True"
        ),
        report=_report_path(a.get("report")),
        slow_rank=_slow_rank(a.get("slow_rank", 30.0)),
        visible_devices=visible,
    )
    _check_rendezvous(spec)
    _check_shared_numa(spec)
    return spec


def parse_ranks_filter(value: object, nproc: int) -> tuple[int, ...] | None:
    """torchrun's ``--local-ranks-filter``: ``'0,2'`` -> (0, 2); None or ``''``: every rank.

    Raises:
        ValueError: not comma-separated local ranks of this node.
        TypeError: neither a string, an int nor a list of ints.
    """
    example = "'0' or local_ranks_filter='0,2'"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        items: list[object] = [p.strip() for p in value.split(",")]
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, (list, tuple, set, frozenset, range)):
        items = list(value)
    else:
        raise TypeError(f"local_ranks_filter must be str, not {value!r}; e.g. {example}")
    ranks: set[int] = set()
    for item in items:
        text = str(item)
        if isinstance(item, bool) or not text.isdigit() or int(text) >= nproc:
            rule = f"each entry must be a local rank of this node's workers, 0-{nproc - 1}"
            raise _bad("local_ranks_filter", value, rule, example)
        ranks.add(int(text))
    return tuple(sorted(ranks))


def _numa_binding(value: object, spec: object, devices: list[str]) -> str | None:
    """torch's NUMA strategy for every rank (``node``, ``socket``, ...), or None."""
    if value is None:
        return None
    text = _typed("numa_binding", value, str, "'node'").strip()
    strategies = _devices.numa_strategies()
    if text not in strategies:
        import torch

        have = f"one of {', '.join(strategies)}" if strategies else "None: it has no NUMA binding"
        rule = f"the installed torch {torch.__version__} offers {have}"
        raise _bad("numa_binding", value, rule, repr(strategies[0]) if strategies else "None")
    if not devices[0].startswith("cuda"):
        raise ValueError(
            f"invalid numa_binding {value!r} for devices {spec!r}: it binds each rank to the "
            f"CPUs near its GPU, and CPU workers have no GPU; drop numa_binding or give GPUs, "
            f"e.g. devices='cuda:0-3', numa_binding='node'"
        )
    if shutil.which("numactl") is None:
        raise _bad(
            "numa_binding",
            value,
            "torch's NUMA binding needs the numactl command, which is not on PATH; install "
            "it (e.g. apt-get install numactl) or leave numa_binding unset",
            "None",
        )
    return text


def _check_shared_numa(spec: LaunchSpec) -> None:
    """``exclusive`` and ``core-complex`` share a NUMA node's cores among the GPUs a rank
    sees; with ``virtual_local_rank`` each rank sees one, and would get them all."""
    if spec.virtual_local_rank and spec.numa_binding in ("exclusive", "core-complex"):
        raise ValueError(
            f"invalid numa_binding {spec.numa_binding!r} with virtual_local_rank=True: it "
            f"shares a NUMA node's cores among the GPUs each rank sees, and each rank sees "
            f"only its own, so the shares would overlap; use numa_binding='node' (or "
            f"'socket'), or drop virtual_local_rank"
        )


def _str(name: str, value: object) -> str:
    value = _typed(name, value, str, "'127.0.0.1:29400'")
    return value.strip()


def spec_to_json(spec: LaunchSpec) -> str:
    """The spec as JSON, to hand to launched scripts through their environment."""
    return json.dumps(asdict(spec))


def spec_from_json(text: str) -> LaunchSpec:
    """The spec :func:`spec_to_json` wrote."""
    data = json.loads(text)
    data["devices"] = tuple(data["devices"])
    data["rdzv_configs"] = tuple(tuple(pair) for pair in data["rdzv_configs"])
    for name in ("local_ranks_filter", "visible_devices"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return LaunchSpec(**data)
