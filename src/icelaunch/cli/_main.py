"""The ``icelaunch`` command: run a script or module in every worker, torchrun-style.

``main`` parses (``_parser``), launches through the engine's command door and
turns how the launch ended into an exit status; ``icelaunch stacks`` is
``_stacks``, ``icelaunch report`` is ``_report``, ``icelaunch top`` is ``_top`` (drawn by
``_top_view``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict

from icelaunch import _rundir
from icelaunch._errors import EXIT_TIMEOUT, exit_status
from icelaunch.cli._parser import PROG, Invocation, build_parser, parse

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the ``icelaunch`` command; return its exit status."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    if argv[:1] == ["stacks"]:  # a script file named stacks runs as `icelaunch ./stacks`
        from icelaunch.cli._stacks import stacks_command

        return stacks_command(argv[1:])
    if argv[:1] == ["report"]:  # a script file named report runs as `icelaunch ./report`
        from icelaunch.cli._report import report_command

        return report_command(argv[1:])
    if argv[:1] == ["top"]:  # a script file named top runs as `icelaunch ./top`
        from icelaunch.cli._top import top_command

        return top_command(argv[1:])
    from icelaunch import _engine  # imports no torch

    parser = build_parser()
    try:
        with _engine.held_signals():  # parsing imports torch for 'auto' devices
            invocation = parse(parser, argv)
    except SystemExit as exc:  # argparse: --help, --version or a usage error, already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except (ValueError, TypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if invocation.dry_run:
        print(json.dumps({"spec": asdict(invocation.spec), "command": invocation.command}))
        return 0
    return run(invocation)


def run(invocation: Invocation) -> int:
    """Launch the command in every worker of this node; return the exit status."""
    from icelaunch import _engine
    from icelaunch._errors import LaunchStopped, PortBusyError

    try:
        with _signals_handled(invocation.signals_to_handle):
            _engine.launch_command(invocation.spec, list(invocation.command))
    except _engine.WorkerFailedError as err:
        print(err, file=sys.stderr)
        return EXIT_TIMEOUT if isinstance(err, TimeoutError) else exit_status(err.first.exitcode)
    except LaunchStopped as stop:  # SIGTERM, Ctrl-C, ...: 128 + the signal (said already)
        return stop.exit_status
    except PortBusyError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # e.g. a log_dir that cannot be created
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


@contextlib.contextmanager
def _signals_handled(signals: str | None) -> Iterator[None]:
    """Have torch's agent stop the workers on ``signals``, as torchrun does (its variable)."""
    saved = os.environ.get(_rundir.SIGNALS_ENV)
    if signals is not None:
        os.environ[_rundir.SIGNALS_ENV] = signals
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_rundir.SIGNALS_ENV, None)
        else:
            os.environ[_rundir.SIGNALS_ENV] = saved
