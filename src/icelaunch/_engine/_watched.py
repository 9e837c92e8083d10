"""One launch under watch: its Monitor, made from the spec, and its report, once it ended.

``watched`` yields the launch's :class:`~icelaunch._watching.Monitor` and, however
the launch ends (a value, a failure, a time limit, a stop signal, an error),
writes the run report to ``spec.report`` if one is asked for. A report that
cannot be written is logged; it never hides how the launch ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import Iterator
from typing import Any

from icelaunch import _watching
from icelaunch._engine._failures import LaunchTimeoutError, WorkerFailedError
from icelaunch._errors import EXIT_TIMEOUT, LaunchStopped, exit_status
from icelaunch._spec import LaunchSpec

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def watched(spec: LaunchSpec, job_dir: str) -> Iterator[_watching.Monitor]:
    """The launch's monitor; the report is written when the block ends."""
    recorder = _watching.Recorder("?", _parameters(spec), spec.node_rank)
    gpus = any(d.startswith("cuda") for d in spec.devices)
    monitor = _watching.Monitor(recorder, job_dir, spec.slow_rank, gpus=gpus)
    try:
        yield monitor
    except BaseException as exc:
        _write(spec, recorder, *_outcome(exc), failure=exc)
        raise
    _write(spec, recorder, "succeeded", recorder.success_message(), None, 0, failure=None)


def _outcome(exc: BaseException) -> tuple[str, str, str | None, int | None]:
    """(status, message, signal, exit status) of a launch that ended with ``exc``."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, LaunchTimeoutError):
        return exc.reason, exc.why or first_line, None, EXIT_TIMEOUT
    if isinstance(exc, WorkerFailedError):
        return "failed", exc.first.summary(), None, exit_status(exc.first.exitcode)
    if isinstance(exc, LaunchStopped):
        name = signal.Signals(exc.signal).name
        return "stopped", first_line, name, exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        return "stopped", "interrupted (Ctrl-C)", "SIGINT", 128 + signal.SIGINT
    return "error", f"{type(exc).__name__}: {first_line}", None, 1


def _write(
    spec: LaunchSpec,
    recorder: _watching.Recorder,
    status: str,
    message: str,
    sig: str | None,
    code: int | None,
    failure: BaseException | None,
) -> None:
    if spec.report is None:
        return
    try:
        document = recorder.report(status, message, sig, code, failure)
        _watching.write(spec.report, document)
    except Exception as exc:  # the launch's own outcome comes first
        logger.warning("the run report could not be written to %s: %s", spec.report, exc)


def _parameters(spec: LaunchSpec) -> dict[str, Any]:
    """The spec as JSON-ready data."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
