"""``python -m icelaunch._worker._script [--env-file FILE] COMMAND...``: a script's worker.

It runs the worker-side set-up (:func:`icelaunch._worker._bootstrap.bootstrap_common`)
and then the original command in this same process, so the worker's pid is the
one torch started: ``python -u script.py args`` and ``python -u -m mod args``
run in-process as Python would run them (``sys.argv``, ``sys.path[0]``,
``__main__``, ``__file__``); any other command (``--no-python``, another
interpreter) replaces this process with ``os.execvp``. A script ends with its
exit status as under Python, without the interpreter's teardown (``_exit``).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from icelaunch import _placement, _rundir
from icelaunch._worker._bootstrap import bootstrap_common, die_with_parent
from icelaunch._worker._context import set_identity
from icelaunch._worker._exit import exit_now, exit_status

_OWN_FILE = os.path.abspath(__file__)
_UNBUFFERED = "-u"


@dataclass(frozen=True)
class Plan:
    """How to run a command: a script path, a module name, or an executable."""

    kind: str  # "path", "module" or "exec"
    target: str
    args: tuple[str, ...]


def plan(command: Sequence[str]) -> Plan:
    """How :func:`main` runs ``command`` (the argv torch would have started).

    >>> import sys
    >>> plan([sys.executable, "-u", "train.py", "--lr", "1"])
    Plan(kind='path', target='train.py', args=('--lr', '1'))
    >>> plan([sys.executable, "-u", "-m", "pkg.train"])
    Plan(kind='module', target='pkg.train', args=())
    >>> plan(["./run.sh", "x"])
    Plan(kind='exec', target='./run.sh', args=('x',))
    """
    if not command:
        raise ValueError(
            "no command given: python -m icelaunch._worker._script [--env-file FILE] COMMAND..."
        )
    rest = list(command[1:])
    if _same_python(command[0]):
        while rest and rest[0] == _UNBUFFERED:
            rest.pop(0)
        if len(rest) >= 2 and rest[0] == "-m":
            return Plan("module", rest[1], tuple(rest[2:]))
        if rest and not rest[0].startswith("-"):
            return Plan("path", rest[0], tuple(rest[1:]))
    return Plan("exec", command[0], tuple(command[1:]))


def _same_python(program: str) -> bool:
    try:
        return os.path.samefile(program, sys.executable)
    except OSError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    """Set up this worker, then run the command as Python (or exec) would.

    ``--env-file FILE`` first: the variables the launcher gives this launch's
    workers (the spec, the console, the run folder, ...), set before anything runs.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [_rundir.ENV_FILE_FLAG] and len(args) >= 2:
        _take_environment(args[1])
        args = args[2:]
    how = plan(args)
    launcher = os.environ.get(_rundir.LAUNCHER_PID_ENV, "")
    if launcher.isdigit():
        die_with_parent(int(launcher))  # no rank outlives a launcher killed with -9
    who = _rundir.Identity.from_env(os.environ)  # read once
    if who is not None:
        set_identity(who)
        _place(who)
    bootstrap_common(who, os.environ.get(_rundir.RUN_DIR_ENV))
    if how.kind == "exec":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(how.target, [how.target, *how.args])
    run: Callable[[], object]
    if how.kind == "module":
        sys.argv = [how.target, *how.args]  # runpy sets argv[0] to the module's file
        run = lambda: runpy.run_module(how.target, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        sys.argv = [how.target, *how.args]
        if os.path.isfile(how.target) and not _is_zip(how.target):
            sys.path[0] = os.path.dirname(os.path.realpath(how.target))
        else:  # a directory or zip with __main__.py: run_path puts it first itself
            del sys.path[0]
        run = lambda: runpy.run_path(how.target, run_name="__main__")  # noqa: E731
    exit_now(_run_without_our_frames(run))


def _take_environment(path: str) -> None:
    """Set the launcher's variables for this worker."""
    with open(path) as fh:
        env: dict[str, str] = json.load(fh)
    os.environ.update(env)


def _place(who: _rundir.Identity) -> None:
    """The rank's GPUs, CPUs and threads (``_placement``), before the script runs."""
    text = os.environ.get(_rundir.SPEC_ENV)
    if text is not None:
        from icelaunch._spec import spec_from_json

        _placement.place(spec_from_json(text), who.local_rank)


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _run_without_our_frames(run: Callable[[], object]) -> int:
    """Run; the exit status. An uncaught exception is reported as Python would,
    without our frames.

    A script that ends successfully with torch.distributed's default group still
    up (Lightning Fabric, Accelerate and many torchrun scripts leave it) has it
    destroyed here, before the atexit callbacks, as torch asks programs to do.
    """
    try:
        run()
    except SystemExit as exc:
        status = exit_status(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        tb = _user_frames(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    else:
        status = 0
    if status == 0:
        _release_process_group()
    return status


def _release_process_group() -> None:
    """Destroy torch.distributed's default group if the script left one."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """``tb`` without its leading frames from this module and runpy."""
    first = tb
    while first is not None and _ours(first.tb_frame):
        first = first.tb_next
    return first or tb


def _ours(frame: types.FrameType) -> bool:
    filename = frame.f_code.co_filename
    return frame.f_globals.get("__name__") == "runpy" or os.path.abspath(filename) == _OWN_FILE


if __name__ == "__main__":
    main()
