"""The engine's two doors: a function in every worker, or a command in every worker.

Both describe what the workers run as a :class:`Target` (built per run folder)
and pass the environment the workers need as data: a function's in its job, a
command's in a file the script runner reads (``_rundir.script_env_path``). One
variable is the exception: a command's job mark (``_stop.JobMark``) must be in
each worker's environment from its exec on, where ``/proc/<pid>/environ`` of
its children shows it, so the launch carries it in the launcher's environment
while it runs (``Target.inherited``; put back afterwards). The launch itself is
``_launch.run_launch``, with the signals the engine's face holds from the start.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from icelaunch import _console, _hints, _placement, _rundir, _transfer, _worker
from icelaunch._engine import _forkserver, _stop
from icelaunch._engine._launch import Target, run_launch
from icelaunch._engine._signals import LaunchSignals
from icelaunch._spec import LaunchSpec, spec_to_json


def launch(
    spec: LaunchSpec, fn: Callable[..., Any], args: tuple[Any, ...], signals: LaunchSignals
) -> dict[int, Any]:
    """Run ``fn(*args)`` in every worker of this node; return values by global rank.

    Raises:
        WorkerFailedError: workers failed and no restart was left.
        KeyboardInterrupt: the launching process got SIGINT.
    """
    placements = _placement.check_launch(spec, os.environ)  # a hidden GPU fails here
    visible = tuple(p.visible for p in placements)  # set before a worker unpickles its job
    name = getattr(fn, "__qualname__", None) or repr(fn)
    console = _console.new_address()
    mark = _stop.JobMark.new()
    sent: list[_transfer.Sent] = []

    def target(run_dir: str) -> Target:
        notify = _rundir.done_address(run_dir)
        env = {**os.environ, _rundir.CONSOLE_ENV: console, mark.name: mark.value}
        job = _worker.Job(
            fn, args, spec, run_dir, notify, _forkserver.uses_fork_server(spec), env=env
        )
        if spec.start_method == "fork":  # forked workers inherit the job: nothing is pickled
            return Target(name, _worker.run, (job,), True, mark, console)
        sent.append(_payload(name, job))
        marked = (sent[-1].payload, _console.WorkerMark(), visible)  # mark: _console._early
        return Target(name, _worker.run, marked, True, mark, console)

    _forkserver.warm_up(spec)  # the fork server imports torch while the rendezvous is set up
    try:
        return run_launch(spec, target, signals)
    finally:
        for each in sent:
            each.close()


def _payload(name: str, job: _worker.Job) -> _transfer.Sent:
    """The job as bytes; functions from ``__main__``, lambdas and closures go by value
    (with their real file names), large tensors, arrays and bytes through shared
    memory (see ``_transfer``)."""
    try:
        data = _transfer.send(job)
    except (_transfer.UnsupportedTransferError, OSError):  # not a pickling problem
        raise
    except Exception as exc:
        raise TypeError(
            f"cannot send {name} and its arguments to the workers: {type(exc).__name__}: {exc}. "
            f"With start_method={job.spec.start_method!r} they are pickled; "
            f"{_hints.unpicklable_job(exc)}"
        ) from exc
    return data


def launch_command(spec: LaunchSpec, argv: list[str], signals: LaunchSignals) -> None:
    """Run the command ``argv`` (e.g. ``[sys.executable, "-u", "train.py"]``) in every worker.

    Workers find the spec in ``ICELAUNCH_SPEC`` (see :func:`icelaunch.current`),
    set from a file in the run folder by the script runner (``_worker._script``).

    Raises:
        WorkerFailedError: workers failed and no restart was left.
    """
    _placement.check_launch(spec, os.environ)
    name = " ".join(argv)
    console = _console.new_address()
    mark = _stop.JobMark.new()
    spec_json = spec_to_json(spec)

    def target(run_dir: str) -> Target:
        env = {
            _rundir.SPEC_ENV: spec_json,
            _rundir.RUN_DIR_ENV: run_dir,  # where the scripts leave their stacks
            _rundir.CONSOLE_ENV: console,
            _rundir.LAUNCHER_PID_ENV: str(os.getpid()),  # the rank dies with it
        }
        env_file = _rundir.script_env_path(run_dir)
        with open(env_file, "w") as fh:
            json.dump(env, fh)
        wrapped = script_command(env_file, argv)
        inherited = ((mark.name, mark.value),)
        return Target(name, wrapped[0], tuple(wrapped[1:]), False, mark, console, inherited)

    run_launch(spec, target, signals)


def script_command(env_file: str, argv: list[str]) -> list[str]:
    """``argv`` run through the script runner, which sets the worker up first and
    then runs it in the same process."""
    runner = [sys.executable, "-u", "-m", _rundir.SCRIPT_MODULE, _rundir.ENV_FILE_FLAG, env_file]
    return [*runner, *argv]
