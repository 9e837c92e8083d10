"""The ``icelaunch`` command's parser: options, the torchrun dialect, validation.

Its options are the parameters of ``ElasticLauncher.__freeze__`` (names,
defaults and types are read from the signature), and its values are validated
by ``ElasticLauncher(...).freeze()``: the command and the Python API share one
source of truth. ``--help`` does not import torch.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from icelaunch import __version__, _rundir
from icelaunch._launcher import ElasticLauncher
from icelaunch._spec import LaunchSpec
from icelaunch.cli import _torchrun

PROG = "icelaunch"

HELP = {
    "devices": "devices of this node, one worker each (grammar below)",
    "nnodes": "node count N, or MIN:MAX for an elastic job (needs c10d or etcd)",
    "dist_backend": "process-group backend for init_process_group(): nccl, gloo, mpi or auto",
    "rdzv_id": "job id shared by all nodes",
    "rdzv_endpoint": "rendezvous host:port for c10d and etcd (static uses the master address)",
    "rdzv_backend": "rendezvous backend: static, c10d, etcd or etcd-v2",
    "rdzv_configs": "extra rendezvous settings key=value,..., e.g. timeout=60,join_timeout=30",
    "standalone": "single node: a private c10d rendezvous on a free port",
    "max_restarts": "restarts of the worker group before failing",
    "monitor_interval": "seconds between health checks of the workers",
    "start_method": "spawn, forkserver or fork (function launches; scripts always get a fresh "
    "interpreter)",
    "redirects": "worker stdout/stderr to log files only: 0 none, 1 out, 2 err, 3 both, or per "
    "local rank, e.g. 0:3,1:2",
    "tee": "worker stdout/stderr to log files and the console (same format as --redirects)",
    "log_dir": "base directory for the workers' log files",
    "role": "worker role name",
    "node_rank": "rank of this node (static rendezvous)",
    "master_addr": "address of node 0 (static rendezvous)",
    "master_port": "port of node 0 (static rendezvous); unset picks a free port",
    "omp_num_threads": "OMP_NUM_THREADS for the workers when the environment does not set it",
    "local_ranks_filter": "local ranks whose output is shown on the console, e.g. 0 or 0,2 "
    "(all when unset); the others still write their log files",
    "log_line_prefix_template": "prefix of every console line and \\r redraw: ${rank}, "
    "${local_rank}, ${role_name}, ${group_rank}, ${hostname}; '' for none",
    "timeout": "seconds for the whole launch; then the ranks' stacks are shown and they stop",
    "hang_timeout": "seconds in which no rank computes, wakes up from a wait or changes its "
    "Python stack before the job is judged hung (stacks shown, workers stopped)",
    "collective_timeout": "seconds a collective waits for its peers before it raises "
    "(init_process_group's timeout; gloo and nccl)",
    "shutdown_timeout": "seconds the workers get to exit on their own when the command is "
    "asked to stop (SIGTERM, Ctrl-C, ...), before SIGKILL (default 30)",
}
ALIASES = {"rdzv_configs": ("--rdzv-conf", "--rdzv_conf"), "redirects": ("-r",), "tee": ("-t",)}
METAVARS = {
    "devices": "SPEC",
    "nnodes": "N|MIN:MAX",
    "dist_backend": "NAME",
    "rdzv_id": "ID",
    "rdzv_endpoint": "HOST:PORT",
    "rdzv_backend": "NAME",
    "rdzv_configs": "K=V,...",
    "max_restarts": "N",
    "monitor_interval": "SECONDS",
    "start_method": "NAME",
    "redirects": "0-3",
    "tee": "0-3",
    "log_dir": "DIR",
    "role": "NAME",
    "node_rank": "N",
    "master_addr": "HOST",
    "master_port": "PORT",
    "omp_num_threads": "N",
    "local_ranks_filter": "RANKS",
    "log_line_prefix_template": "TEMPLATE",
    "timeout": "SECONDS",
    "hang_timeout": "SECONDS",
    "collective_timeout": "SECONDS",
    "shutdown_timeout": "SECONDS",
    "numa_binding": "STRATEGY",
    "report": "PATH",
    "slow_rank": "SECONDS|off",
}
FUNCTION_ONLY = ("warm_start", "process_group")
NPROC_WORDS = {"gpu": "cuda:*", "cpu": "cpu:*", "auto": "auto:*"}

USAGE = (
    f"{PROG} [options] script.py [script args ...]\n"
    f"       {PROG} [options] -m package.module [module args ...]"
)
DESCRIPTION = """\
Run a Python script (or module) in one process per device, on this machine or
many, with torch.distributed.elastic (the engine of torchrun). Inside the
script, icelaunch.current() describes the worker (rank, world_size,
assigned_device, ...) and icelaunch.init_process_group() sets the device and
joins the process group, as in a function launched by ElasticLauncher.
Options may also be spelled with underscores (--node_rank)."""
EPILOG = """\
devices:
  auto | cpu | cuda | auto:* | cpu:* | cuda:* | <type>:<list>
  <list> is comma-separated indices and inclusive ranges; one worker each.
    --devices auto         one worker: cuda:0 with CUDA, else the CPU (default)
    --devices cpu:0-3      four CPU workers
    --devices cpu:*        one CPU worker per core
    --devices cuda:*       one worker per visible GPU (auto:* falls back to cpu:*)
    --devices cuda:1,3     two workers, on GPUs 1 and 3
    --devices cuda:0-2,7   four workers, on GPUs 0, 1, 2 and 7
  --dist-backend auto picks nccl for CUDA devices, else gloo.
  --nproc-per-node N is cuda:0-(N-1) with CUDA, else cpu:0-(N-1); gpu, cpu and
  auto mean cuda:*, cpu:* and auto:*.

examples:
  icelaunch --devices cpu:0-3 train.py --epochs 2
  icelaunch --nproc-per-node 8 -m mypkg.train
  icelaunch --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 train.py

exit status:
  0 when every worker succeeds; else the exit code of the first worker to fail
  (128+N when signal N killed it) with the failure report on stderr; 2 for
  usage errors; 124 when --timeout or --hang-timeout stopped it; 128+N when
  signal N asked it to stop (130 on Ctrl-C, 143 on SIGTERM: the workers had
  --shutdown-timeout seconds to exit on their own).

while a launch runs:
  icelaunch stacks [PID]   the Python stacks of its workers, grouped, without
                           disturbing them (PID: the launching process; none:
                           every launch you may see). A script file named
                           stacks runs as `icelaunch ./stacks`.

after it:
  icelaunch report RUN.json [--timeline OUT.html]   the run report (--report
                           PATH) summed up; the ranks over time drawn.
                           A script file named report runs as `icelaunch ./report`."""


@dataclass(frozen=True)
class Invocation:
    """A parsed command line: the validated spec and the command each worker runs."""

    spec: LaunchSpec
    command: tuple[str, ...]
    dry_run: bool = False
    signals_to_handle: str | None = None  # torchrun's --signals-to-handle


def _freeze_parameters() -> list[inspect.Parameter]:
    """The parameters of ``ElasticLauncher.__freeze__`` that are options of the command.

    All but those that concern function launches only (``FUNCTION_ONLY``): a launched
    script always starts in a fresh interpreter and sets up its own process group.
    """
    parameters = inspect.signature(ElasticLauncher.__freeze__).parameters.values()
    return [p for p in parameters if p.name not in ("self", *FUNCTION_ONLY)]


def seconds_or_off(text: str) -> float | None:
    """``--slow-rank``'s value: seconds, or ``off``/``none`` for None.

    >>> seconds_or_off("20"), seconds_or_off("off")
    (20.0, None)
    """
    if text.strip().lower() in ("off", "none"):
        return None
    return float(text)


#: parameters whose text is read otherwise than by their type
CONVERTERS: dict[str, Callable[[str], Any]] = {"slow_rank": seconds_or_off}


def _converter(param: inspect.Parameter) -> Callable[[str], Any] | None:
    """How to read the parameter's value from text; None for a boolean flag."""
    if param.name in CONVERTERS:
        return CONVERTERS[param.name]
    kind = typing.get_type_hints(ElasticLauncher.__freeze__)[param.name]
    options = [k for k in typing.get_args(kind) if k is not type(None)] or [kind]
    if options[0] is bool:
        return None
    return typing.cast("Callable[[str], Any]", options[0])


def _flags(name: str) -> tuple[list[str], list[str]]:
    """Option strings shown in --help, and the underscore spellings accepted silently."""
    aliases = ALIASES.get(name, ())
    shown = ["--" + name.replace("_", "-"), *(a for a in aliases if "_" not in a)]
    hidden = [f for f in ("--" + name, *aliases) if "_" in f]
    return shown, hidden


def _shown(default: object) -> str:
    if default is None:
        return "unset"
    return str(default) or "empty"


def _add_option(group: argparse._ArgumentGroup, name: str, **kwargs: Any) -> None:
    """Add ``--name`` (dash spelling) and, hidden from --help, its underscore spellings."""
    shown, hidden = _flags(name)
    group.add_argument(*shown, dest=name, **kwargs)
    if hidden:
        group.add_argument(*hidden, dest=name, **{**kwargs, "help": argparse.SUPPRESS})


def _documented(name: str) -> str:
    """The parameter's description in ``ElasticLauncher.__freeze__``'s docstring (Args:),
    so that a new keyword-only parameter needs no entry in ``HELP``."""
    doc = inspect.getdoc(ElasticLauncher.__freeze__) or ""
    match = re.search(rf"^ {{4}}{name}: (.+?)(?=^ {{4}}\w+: |^\S|\Z)", doc, re.S | re.M)
    return " ".join(match.group(1).split()) if match else name.replace("_", " ")


def _add_parameter(group: argparse._ArgumentGroup, param: inspect.Parameter) -> None:
    convert = _converter(param)
    help_text = HELP.get(param.name) or _documented(param.name)
    if convert is None:
        action = "store_true" if param.default is False else argparse.BooleanOptionalAction
        _add_option(group, param.name, action=action, help=help_text)
        return
    help_text += f" (default: {_shown(param.default)})"
    metavar = METAVARS.get(param.name, param.name.upper())
    _add_option(group, param.name, type=convert, metavar=metavar, help=help_text)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; defaults stay unset so ElasticLauncher's own apply."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    launch = parser.add_argument_group("launch options (the parameters of ElasticLauncher)")
    for param in _freeze_parameters():
        _add_parameter(launch, param)
    _add_torchrun_options(parser)
    _add_command_arguments(parser)
    return parser


def _add_torchrun_options(parser: argparse.ArgumentParser) -> None:
    """torchrun's options that are no launcher parameter: accepted, or refused with why."""
    torchrun = parser.add_argument_group("torchrun spellings")
    _add_option(
        torchrun,
        "nproc_per_node",
        metavar="N|gpu|cpu|auto",
        help="workers on this node, instead of --devices (see devices below)",
    )
    _add_option(
        torchrun,
        "local_addr",
        metavar="HOST",
        help="this node's address for c10d/etcd-v2 (the same as --rdzv-conf local_addr=HOST)",
    )
    _add_option(
        torchrun,
        "signals_to_handle",
        metavar="SIG,...",
        help="signals passed on to the workers while the launch goes on (SIGUSR1 and "
        "SIGUSR2 always are); stop signals named here stop it, as always "
        f"({','.join(_rundir.STOP_SIGNALS)}, ...)",
    )
    _add_option(
        torchrun,
        "run_path",
        action="store_true",
        help="accepted: the script already runs in the worker's own interpreter",
    )
    refused = parser.add_argument_group("torchrun options that icelaunch refuses (the reason)")
    for name, (why, _) in _torchrun.REFUSED.items():
        _add_option(refused, name, nargs="?", const="", metavar="...", help=why)


def _add_command_arguments(parser: argparse.ArgumentParser) -> None:
    command = parser.add_argument_group("what each worker runs")
    command.add_argument(
        "-m",
        "--module",
        dest="module",
        action="store_true",
        help="run a module, as `python -m`",
    )
    _add_option(
        command,
        "no_python",
        action="store_true",
        help="run the script as an executable, not with this Python",
    )
    _add_option(
        command,
        "dry_run",
        action="store_true",
        help="print the validated launch spec and the worker command as JSON; start nothing",
    )
    command.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    command.add_argument("script", nargs="?", help="the script to run (the module with -m)")
    command.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> Invocation:
    """Parse and validate ``argv``.

    Raises:
        SystemExit: argparse rejected the command line (the message is printed).
        ValueError: a value breaks its rule (the message quotes it).
        TypeError: a value has the wrong type.
    """
    given = vars(parser.parse_args(argv))
    for name in _torchrun.REFUSED:
        if name in given:
            raise ValueError(_torchrun.refusal(name))
    given.update(_env_options(given))
    options = {p.name: given[p.name] for p in _freeze_parameters() if p.name in given}
    if "local_addr" in given:
        local = f"local_addr={given['local_addr']}"
        options["rdzv_configs"] = ",".join(filter(None, (options.get("rdzv_configs"), local)))
    if "nproc_per_node" in given:
        if "devices" in options:
            raise ValueError("give --devices or --nproc-per-node, not both")
        options["devices"] = devices_for_nproc(given["nproc_per_node"])
    spec = ElasticLauncher(**options).freeze().spec
    command = _command(given)
    signals = given.get("signals_to_handle")
    signals = None if signals is None else _torchrun.check_signals(signals)
    return Invocation(spec, command, bool(given.get("dry_run", False)), signals)


def _env_options(given: dict[str, Any]) -> dict[str, Any]:
    """torchrun's ``PET_*`` forms of the options not on the command line.

    Those that place the node in a job (``PET_NNODES``, ...) are left to
    ``ElasticLauncher.freeze()``, which reads them as for a function launch.
    """
    from icelaunch import _cluster

    params = {p.name: p for p in _freeze_parameters()}
    by_cluster = {f.param for f in _cluster.TORCHRUN_FIELDS}
    accepted = {
        t: _torchrun.RENAMED.get(t, t)
        for t in _torchrun.ACCEPTED
        if _torchrun.RENAMED.get(t, t) not in by_cluster
    }
    if "devices" in given:
        accepted.pop("nproc_per_node", None)  # an explicit --devices wins
    found = _torchrun.env_defaults(os.environ, accepted, given)
    for dest, value in found.items():
        convert = _converter(params[dest]) if dest in params else None
        if convert is not None and isinstance(value, str):
            name = _torchrun.env_name(next(t for t, d in accepted.items() if d == dest))
            try:
                found[dest] = convert(value)
            except ValueError:
                raise ValueError(
                    f"invalid environment variable {name}={value!r}: must be "
                    f"{convert.__name__}, as for --{dest.replace('_', '-')}"
                ) from None
    return found


def devices_for_nproc(value: str) -> str:
    """torchrun's ``--nproc-per-node`` as a device spec.

    Raises:
        ValueError: ``value`` is neither a count >= 1 nor gpu, cpu or auto.
    """
    text = value.strip()
    if text in NPROC_WORDS:
        return NPROC_WORDS[text]
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"invalid nproc_per_node {value!r}: must be a worker count N >= 1 or one of "
            f"{', '.join(NPROC_WORDS)}, e.g. --nproc-per-node 4"
        )
    from icelaunch import _devices

    kind = "cuda" if _devices.cuda_device_count() > 0 else "cpu"
    return f"{kind}:0-{int(text) - 1}"


def _command(given: dict[str, Any]) -> tuple[str, ...]:
    script: str | None = given.get("script")
    args: list[str] = given.get("script_args", [])
    if not script:
        raise ValueError("no script given: icelaunch [options] script.py [args], or -m module")
    module, no_python = given.get("module", False), given.get("no_python", False)
    if module and no_python:
        raise ValueError("give -m/--module or --no-python, not both")
    if module:
        return (sys.executable, "-u", "-m", script, *args)
    if no_python:
        if shutil.which(script) is None:
            raise ValueError(f"program {script!r} not found or not executable (--no-python)")
        return (script, *args)
    if not os.path.isfile(script):
        raise ValueError(f"script {script!r} not found (for a module, use -m {script})")
    return (sys.executable, "-u", script, *args)
