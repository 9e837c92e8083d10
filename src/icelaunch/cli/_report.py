"""``icelaunch report RUN.json [--timeline OUT]``: a run report read back.

Prints the report's summary and, with ``--timeline``, draws the ranks over time
(``_watching._timeline``). Every error is one line on stderr: 2 for a usage
error, 1 for a file that cannot be read as a run report or a picture that
cannot be drawn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from icelaunch._watching._timeline import VERSIONS, check, draw, picture_format, summary

PROG = "icelaunch report"
USAGE = "icelaunch report RUN.json [--timeline OUT.html|OUT.png|OUT.svg|OUT.pdf]"
DESCRIPTION = f"""\
Summarise a run report: the file a launch writes with report=PATH (ElasticLauncher)
or --report PATH (the icelaunch command) when it ends. Prints the target, the
outcome, one line per rank (its last attempt, how it ended, peak memory, CPU
time), the findings (slow ranks, stalls) and the failure's first line.
Reads report version {", ".join(str(v) for v in VERSIONS)}.

--timeline draws each rank over time (starting, running, waiting in a
collective; how each attempt ended; restarts; slow ranks): OUT.html is one
self-contained file (no network, no dependencies), OUT.png, .svg or .pdf need
matplotlib (pip install 'icelaunch[timeline]').
To run a script file named `report` instead, write `icelaunch ./report`."""
EXIT_USAGE = 2
EXIT_FAILED = 1
#: what a report too damaged to read raises in summary() or draw()
DAMAGED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class _Unreadable(Exception):
    """The file is no run report that this icelaunch reads (the message says why)."""


def report_command(argv: list[str]) -> int:
    """Run ``icelaunch report``; return the exit status."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=USAGE,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("path", metavar="RUN.json", help="a run report")
    parser.add_argument("--timeline", metavar="OUT", help="draw the timeline into OUT")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if os.path.isfile("report"):
        print(f"{PROG}: note: to run the script ./report, write `icelaunch ./report`",
              file=sys.stderr)  # fmt: skip
    if args.timeline is not None:
        try:
            picture_format(args.timeline)
        except ValueError as exc:
            return _error(str(exc), EXIT_USAGE)
    try:
        report = load(args.path)
        text = summary(report)
    except _Unreadable as exc:
        return _error(str(exc), EXIT_FAILED)
    except DAMAGED as exc:
        return _error(f"{args.path}: a damaged run report ({_what(exc)})", EXIT_FAILED)
    print(text)
    return _draw(report, args.path, args.timeline) if args.timeline is not None else 0


def load(path: str) -> dict[str, Any]:
    """The run report in ``path``, checked; raises _Unreadable saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except FileNotFoundError:
        raise _Unreadable(f"{path}: no such file") from None
    except IsADirectoryError:
        raise _Unreadable(f"{path}: a directory, not a run report") from None
    except OSError as exc:
        raise _Unreadable(f"{path}: cannot be read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise _Unreadable(
            f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except UnicodeDecodeError:
        raise _Unreadable(f"{path}: not JSON (not UTF-8 text)") from None
    try:
        check(report)
    except ValueError as exc:
        raise _Unreadable(f"{path}: {exc}") from None
    return report  # type: ignore[no-any-return]


def _draw(report: dict[str, Any], source: str, out: str) -> int:
    try:
        draw(report, out)
    except ImportError as exc:
        return _error(str(exc), EXIT_FAILED)
    except OSError as exc:
        return _error(f"cannot write {out}: {exc.strerror or exc}", EXIT_FAILED)
    except DAMAGED as exc:
        return _error(f"{source}: a damaged run report ({_what(exc)})", EXIT_FAILED)
    print(f"timeline: {out}")
    return 0


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _error(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status
