"""Both ends of every launcher <-> worker protocol: files, sockets, variables, signals.

The launcher writes these names and its workers read them (or the other way
round); each is spelled here once and imported by both ends. A worker reads
its identity from the environment once (:func:`Identity.from_env`, in its
bootstrap) and passes it on.

A launch's files::

    <tempdir>/icelaunch_<launcher pid>_<random>/     job folder (JOB_PREFIX; found by
    |                                                 `icelaunch stacks`, swept when
    |                                                 its launcher is gone)
    +-- <n>/                                         run folder of port attempt n
        +-- failure-A-L.pkl                          rank's exception report (worker)
        +-- started-A-L                              its function began (worker)
        +-- stacks-A-L.txt / stacks-A-L.sigurg       stack dumps / "pid start rank"
        +-- crash-A-L.txt                            faulthandler at a native crash
        +-- stderr-A-L.log                           a failed rank's last stderr bytes
                                                     (the launcher, for its report)
        +-- logs/                                    log files without a log_dir
        +-- worker-env.json                          what a script's worker adds to its
                                                     environment (the command door)
        +-- stop                                     a stop was asked for: the signal's
                                                     name (the launcher; read by
                                                     stop_requested() in the ranks)
        +-- polling-A-L                              the rank calls stop_requested()

``A`` is the attempt (restart count), ``L`` the local rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Environment variables the launcher sets and its workers read.
SPEC_ENV = "ICELAUNCH_SPEC"  # the LaunchSpec as JSON, for launched scripts
RUN_DIR_ENV = "ICELAUNCH_RUN_DIR"  # the run folder, for launched scripts
CONSOLE_ENV = "ICELAUNCH_CONSOLE"  # the console relay's abstract socket
MARK_ENV = "ICELAUNCH_JOB_MARK"  # inherited by every process of one launch
SIGNALS_ENV = "TORCHELASTIC_SIGNALS_TO_HANDLE"  # torch's agent reads it (torchrun sets it)
LAUNCHER_PID_ENV = "ICELAUNCH_LAUNCHER_PID"  # a script's worker dies with this process
AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"  # torch's agent: its store hosts the group
_ATTEMPT_ENV = "TORCHELASTIC_RESTART_COUNT"  # torch's agent: the attempt of a worker

#: the signals that stop a launch (torch's agent handles them; workers get SIGTERM)
STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
#: signals whose default action would end the launcher: handled as a stop too, where
#: the caller left them at their default (SIGPIPE: Python ignores it unless told not to)
OTHER_STOP_SIGNALS: tuple[str, ...] = (
    "SIGALRM",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGPWR",
    "SIGSTKFLT",
    "SIGIO",
    "SIGPIPE",
)
#: signals passed on to every rank while the launch goes on (SLURM's preemption notice)
FORWARDED_SIGNALS: tuple[str, ...] = ("SIGUSR1", "SIGUSR2")
#: the signal a rank answers with its Python stacks (faulthandler, from C). SIGURG: its
#: default action is to ignore it, so a process without our handler (not set up yet,
#: or replaced by an exec) is never killed by it; Python, torch and glibc leave it
#: alone and debuggers pass it on silently (Go's runtime picked it for the same
#: reasons). SIGUSR1/SIGUSR2 belong to SLURM and Lightning (preemption), and a
#: real-time signal's default action kills.
STACK_SIGNAL: int | None = int(signal.SIGURG) if hasattr(signal, "SIGURG") else None
STACK_SIGNAL_NAME = "SIGURG"
#: the console prefix of every line, unless log_line_prefix_template says otherwise
PREFIX_TEMPLATE = "[rank${rank}]: "
#: what a worker tells the console relay when it attaches: the prefix's fields
PREFIX_FIELDS = ("rank", "local_rank", "role_name", "group_rank", "node_rank", "hostname")
_PREFIX_EXAMPLE = "'[${role_name}${rank}]: '"
#: job folders are named ``<JOB_PREFIX><launcher pid>_<random>`` in the temp directory
JOB_PREFIX = "icelaunch_"
LOGS_DIR = "logs"


def attempt_of(env: Mapping[str, str]) -> int:
    """The restart count torch's agent gives a worker's environment (0 if none)."""
    return int(env.get(_ATTEMPT_ENV, "0"))


def uses_agent_store(env: Mapping[str, str]) -> bool:
    """Whether torch's agent store hosts the worker group (static and etcd rendezvous)."""
    return env.get(AGENT_STORE_ENV) == "True"


def stop_signals() -> frozenset[signal.Signals]:
    """:data:`STOP_SIGNALS` as signal numbers (those this platform has)."""
    return signal_numbers(STOP_SIGNALS)


def signal_numbers(names: tuple[str, ...]) -> frozenset[signal.Signals]:
    """``names`` as signal numbers (those this platform has).

    >>> sorted(s.name for s in signal_numbers(("SIGUSR1", "SIGNOSUCH")))
    ['SIGUSR1']
    """
    return frozenset(getattr(signal, name) for name in names if hasattr(signal, name))


def check_template(template: object) -> str:
    """``template`` if it is a valid prefix template, else ValueError/TypeError.

    >>> check_template("[${role_name}:${local_rank}] ")
    '[${role_name}:${local_rank}] '
    """
    if not isinstance(template, str):
        raise TypeError(
            f"log_line_prefix_template must be str, not {template!r}; "
            f"e.g. log_line_prefix_template={_PREFIX_EXAMPLE}"
        )
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if match.group("invalid") is not None or (name is not None and name not in PREFIX_FIELDS):
            found = match.group(0)
            raise ValueError(
                f"invalid log_line_prefix_template {template!r}: {found!r} is not one of "
                f"{', '.join('${' + f + '}' for f in PREFIX_FIELDS)} (write $$ for a dollar sign), "
                f"e.g. log_line_prefix_template={_PREFIX_EXAMPLE}"
            )
    return template


def job_folder_pid(name: str) -> int | None:
    """The launcher pid in a job folder's name, None if ``name`` is no job folder.

    >>> job_folder_pid("icelaunch_4242_ab12cd"), job_folder_pid("other_1")
    (4242, None)
    """
    if not name.startswith(JOB_PREFIX):
        return None
    pid_text = name[len(JOB_PREFIX) :].split("_", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def run_folders(job_dir: str) -> list[str]:
    """The run folders of a job folder, newest first."""
    try:
        names = [n for n in os.listdir(job_dir) if n.isdigit()]
    except OSError:
        return []
    return [os.path.join(job_dir, n) for n in sorted(names, key=int, reverse=True)]


def done_address(run_dir: str) -> str:
    """The abstract Unix socket on which workers of ``run_dir`` report "up" and "returned".

    Abstract (Linux): no file, so the length of TMPDIR does not matter.
    """
    return "\0icelaunch-" + hashlib.sha256(run_dir.encode()).hexdigest()[:32]


#: ``python -m icelaunch._worker._script --env-file FILE COMMAND...``
SCRIPT_MODULE = "icelaunch._worker._script"
ENV_FILE_FLAG = "--env-file"


def script_env_path(run_dir: str) -> str:
    """The JSON object of variables a script's worker sets before the script runs."""
    return os.path.join(run_dir, "worker-env.json")


def sampling_path(run_dir: str) -> str:
    """Present while the launcher samples its ranks: the sampling interval in seconds."""
    return os.path.join(run_dir, "sampling")


def sample_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """A rank's latest look at its own main thread (``_diagnosis._sampling``)."""
    return os.path.join(run_dir, f"sample-{attempt}-{local_rank}.txt")


def live_path(job_dir: str) -> str:
    """The launcher's latest look at its ranks (``icelaunch top`` reads it)."""
    return os.path.join(job_dir, "live.json")


def stop_path(run_dir: str) -> str:
    """The file whose existence says a stop was asked for (it holds the signal's name)."""
    return os.path.join(run_dir, "stop")


def polling_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file whose existence says a rank calls ``stop_requested()`` (and that a
    signal it gets is noted, not its end)."""
    return os.path.join(run_dir, f"polling-{attempt}-{local_rank}")


def report_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """Where a worker writes its failure report for one attempt."""
    return os.path.join(run_dir, f"{report_prefix(attempt)}{local_rank}{REPORT_SUFFIX}")


def report_prefix(attempt: int) -> str:
    """The name prefix of the failure reports of ``attempt`` (they end in ``.pkl``)."""
    return f"failure-{attempt}-"


REPORT_SUFFIX = ".pkl"


def started_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file whose existence says a worker's group was up and its function began."""
    return os.path.join(run_dir, f"{started_prefix(attempt)}{local_rank}")


def started_prefix(attempt: int) -> str:
    """The name prefix of the started files of ``attempt``."""
    return f"started-{attempt}-"


def stacks_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file a rank appends its stack dumps to."""
    return os.path.join(run_dir, f"stacks-{attempt}-{local_rank}.txt")


def ready_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file whose existence says the rank set up its stack handler: ``pid start rank``.

    The launcher signals the rank only while ``/proc`` also shows a handler for
    :data:`STACK_SIGNAL` (an exec keeps the pid and start time, not the handler).
    """
    # the name says which signal the rank answers: a launcher or `icelaunch stacks` of an
    # earlier release (SIGRTMIN+7, ``.pid`` files) finds no such rank, so never kills it
    return os.path.join(run_dir, f"stacks-{attempt}-{local_rank}.sigurg")


#: matches a ready file's name; groups: attempt, local rank
READY_PATTERN = r"^stacks-(\d+)-(\d+)\.sigurg$"


def crash_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file faulthandler writes to when the rank crashes in native code."""
    return os.path.join(run_dir, f"crash-{attempt}-{local_rank}.txt")


def stderr_tail_path(run_dir: str, attempt: int, local_rank: int) -> str:
    """The file the launcher keeps a failed rank's last stderr bytes in."""
    return os.path.join(run_dir, f"stderr-{attempt}-{local_rank}.log")


def catches_signal(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` now (``SigCgt`` in its status):
    exact, and it changes at ``exec``, which resets handlers."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if gone or a zombie.

    With the pid it names one process for good: a pid reused later has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    state, start = fields[0], fields[19]
    return None if state in ("Z", "X", "x") else start


@dataclass(frozen=True)
class Identity:
    """Who a worker is, as torch's agent tells it: read once, at bootstrap."""

    attempt: int
    local_rank: int
    rank: int
    group_rank: int = 0
    role_name: str = "default"

    @classmethod
    def from_env(cls, env: Mapping[str, str], strict: bool = False) -> Identity | None:
        """The identity in ``env`` (torch's variables); None outside a worker.

        ``strict``: every variable torch's agent sets must be there (else KeyError);
        otherwise only ``LOCAL_RANK`` (a process a worker started may lack the rest).

        >>> Identity.from_env({"LOCAL_RANK": "1", "RANK": "3", "TORCHELASTIC_RESTART_COUNT": "2"})
        Identity(attempt=2, local_rank=1, rank=3, group_rank=0, role_name='default')
        """
        if "LOCAL_RANK" not in env:
            return None
        if strict:
            return cls(
                attempt=int(env[_ATTEMPT_ENV]),
                local_rank=int(env["LOCAL_RANK"]),
                rank=int(env["RANK"]),
                group_rank=int(env["GROUP_RANK"]),
                role_name=env["ROLE_NAME"],
            )
        return cls(
            attempt=attempt_of(env),
            local_rank=int(env["LOCAL_RANK"]),
            rank=int(env.get("RANK", env["LOCAL_RANK"])),
            group_rank=int(env.get("GROUP_RANK", "0")),
            role_name=env.get("ROLE_NAME", "default"),
        )

    def notice(self, what: str = "") -> bytes:
        """The datagram a worker sends the agent (to :func:`done_address`): ``up`` once
        its code runs, nothing once its function returned.

        >>> Identity(1, 2, 5).notice("up")
        b'1 2 up'
        """
        return f"{self.attempt} {self.local_rank} {what}".strip().encode()

    def hello(self, hostname: str, pid: int) -> bytes:
        """The line a worker sends the console relay when it attaches: the prefix's
        fields (:data:`PREFIX_FIELDS`), its attempt and pid."""
        fields = {
            "attempt": self.attempt,
            "local_rank": self.local_rank,
            "rank": self.rank,
            "group_rank": self.group_rank,
            "node_rank": self.group_rank,
            "role_name": self.role_name,
            "hostname": hostname,
            "pid": pid,
        }
        return json.dumps(fields).encode() + b"\n"


def read_notice(data: bytes) -> tuple[int, int, str]:
    """(attempt, local rank, what) of a worker's datagram (:meth:`Identity.notice`).

    >>> read_notice(b"1 2 up"), read_notice(b"0 3")
    ((1, 2, 'up'), (0, 3, ''))
    """
    attempt, local_rank, *what = data.decode().split()
    return int(attempt), int(local_rank), " ".join(what)


def read_hello(line: bytes | bytearray) -> dict[str, Any]:
    """The fields of a worker's hello line (:meth:`Identity.hello`)."""
    fields: dict[str, Any] = json.loads(line)
    return fields
