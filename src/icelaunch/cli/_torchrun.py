"""torchrun's options as the ``icelaunch`` command takes them, and their ``PET_*`` forms.

Every option of torchrun 2.11 to 2.15 is either accepted with the same meaning or
refused with the reason and what to use instead (the torchrun CLI tests check
this against torch's own parser). torchrun reads ``PET_<DEST>`` as the
default of each option (its ``env`` and ``check_env`` argparse actions); so
does the command, for the options it accepts. Imports no torch.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

# torchrun's options that the command takes with the same meaning (torchrun's dests).
ACCEPTED = (
    "nnodes",
    "nproc_per_node",
    "rdzv_backend",
    "rdzv_endpoint",
    "rdzv_id",
    "rdzv_conf",
    "standalone",
    "max_restarts",
    "monitor_interval",
    "start_method",
    "role",
    "module",
    "no_python",
    "run_path",
    "log_dir",
    "redirects",
    "tee",
    "local_ranks_filter",
    "log_line_prefix_template",  # torchrun 2.15
    "node_rank",
    "master_addr",
    "master_port",
    "local_addr",
    "signals_to_handle",
    "shutdown_timeout",
    "numa_binding",
    "virtual_local_rank",
)
# torchrun's dest -> the command's dest, where they differ.
RENAMED = {"rdzv_conf": "rdzv_configs"}
# torchrun's store-true options; ``PET_X=1`` turns them on, ``PET_X=0`` off.
SWITCHES = ("standalone", "module", "no_python", "run_path", "virtual_local_rank")
# torchrun options the command takes that are no ElasticLauncher parameter.
COMMAND_ONLY = (
    "nproc_per_node",
    "module",
    "no_python",
    "run_path",
    "local_addr",
    "signals_to_handle",
)

REFUSED = {
    "logs_specs": (
        "icelaunch relays the workers' output itself (rank prefixes, files, rank filter)",
        "--log-dir with --redirects/--tee for files, --local-ranks-filter for the console",
    ),
    "event_log_handler": (
        "icelaunch emits no torchelastic events; it writes one run report instead (events, "
        "every rank's start and end, failures, slow-rank findings)",
        "--report run.json (then `icelaunch report run.json --timeline run.html`)",
    ),
    "duplicate_stdout_filters": (
        "icelaunch does not copy filtered lines to a second file",
        "--tee 1 --log-dir DIR and grep the per-rank files",
    ),
    "duplicate_stderr_filters": (
        "icelaunch does not copy filtered lines to a second file",
        "--tee 2 --log-dir DIR and grep the per-rank files",
    ),
    "print_completion": (  # torchrun 2.15
        "icelaunch prints no shell completion script",
        "icelaunch --help, which lists every option",
    ),
}


def env_name(torchrun_dest: str) -> str:
    """The variable torchrun reads as the option's default.

    >>> env_name("nproc_per_node"), env_name("rdzv_conf")
    ('PET_NPROC_PER_NODE', 'PET_RDZV_CONF')
    """
    return f"PET_{torchrun_dest.upper()}"


def refusal(torchrun_dest: str) -> str:
    """Why ``--<option>`` is refused, and what to use instead."""
    why, instead = REFUSED[torchrun_dest]
    flag = "--" + torchrun_dest.replace("_", "-")
    return f"{flag} is not supported: {why}; use {instead}"


def env_defaults(
    env: Mapping[str, str], accepted: Mapping[str, str], given: Mapping[str, Any]
) -> dict[str, Any]:
    """``{dest: value}`` from ``PET_*`` for options not on the command line.

    Args:
        env: the environment.
        accepted: torchrun's dest -> the command's dest, for the options it accepts.
        given: the command line's values by the command's dest.

    Raises:
        ValueError: a ``PET_*`` variable asks for a refused option, or a switch's
            value is not an integer.
    """
    found: dict[str, Any] = {}
    for torchrun_dest, dest in accepted.items():
        name = env_name(torchrun_dest)
        if dest in given or name not in env:
            continue
        found[dest] = _switch(name, env[name]) if torchrun_dest in SWITCHES else env[name]
    for torchrun_dest in REFUSED:
        name = env_name(torchrun_dest)
        on = torchrun_dest not in SWITCHES or _switch(name, env.get(name, "0"))
        if env.get(name, "").strip() and on:
            raise ValueError(f"{name}={env[name]!r} asks for {refusal(torchrun_dest)}")
    return {k: v for k, v in found.items() if v is not False}


def _switch(name: str, value: str) -> bool:
    try:
        return bool(int(value))
    except ValueError:
        raise ValueError(
            f"invalid environment variable {name}={value!r}: must be 0 or 1, e.g. {name}=1"
        ) from None


def check_signals(text: str) -> str:
    """torchrun's ``--signals-to-handle`` value, checked.

    >>> check_signals("SIGTERM, SIGUSR1")
    'SIGTERM,SIGUSR1'

    Raises:
        ValueError: a name is not a signal of this platform.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not name.startswith("SIG") or not isinstance(getattr(signal, name, None), int):
            raise ValueError(
                f"invalid signals_to_handle {text!r}: {name!r} is not a signal name, "
                f"e.g. --signals-to-handle SIGTERM,SIGINT,SIGUSR1"
            )
    for name in names:
        if name in ("SIGKILL", "SIGSTOP"):
            raise ValueError(
                f"invalid signals_to_handle {text!r}: {name} cannot be caught, so it cannot "
                f"be passed on; e.g. --signals-to-handle SIGUSR1"
            )
    if not names:
        raise ValueError(
            f"invalid signals_to_handle {text!r}: name at least one signal, e.g. SIGTERM,SIGINT"
        )
    return ",".join(names)
