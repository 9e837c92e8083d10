"""Leave the launching process as it was: signal handlers, environment, temp folder, logs."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator

from icelaunch import _rundir


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Put back the caller's signal handlers and environment, whatever happens."""
    saved_env = dict(os.environ)
    handlers = {}
    chosen = os.environ.get(_rundir.SIGNALS_ENV, "")  # torchrun's --signals-to-handle
    for name in (*_rundir.STOP_SIGNALS, *(n.strip() for n in chosen.split(",") if n.strip())):
        sig = getattr(signal, name, None)
        if sig is not None:
            handlers[sig] = signal.getsignal(sig)
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            with contextlib.suppress(ValueError, TypeError):  # not the main thread
                signal.signal(sig, handler)
        if os.environ != saved_env:
            os.environ.clear()
            os.environ.update(saved_env)


def respect_ignored_signals() -> None:
    """Tell torch's agent not to handle a signal the caller ignores (``SIG_IGN``).

    A job started in the background ignores SIGINT; torch would otherwise install
    its handler and stop the launch on a Ctrl-C meant for the foreground.
    Call inside :func:`restored_process_state`, which puts the environment back.
    """
    if _rundir.SIGNALS_ENV in os.environ:
        return  # the user chose
    names = [
        name
        for name in _rundir.STOP_SIGNALS
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) != signal.SIG_IGN
    ]
    os.environ[_rundir.SIGNALS_ENV] = ",".join(names)


@contextlib.contextmanager
def no_torch_temp_files() -> Iterator[None]:
    """Remove the error files torch.multiprocessing leaves in the temp folder on failure."""
    folder = tempfile.gettempdir()
    before = set(os.listdir(folder))
    try:
        yield
    finally:
        for name in set(os.listdir(folder)) - before:
            if name.startswith("pytorch-errorfile-") and name.endswith(".pickle"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


class _DropTraceback(logging.Filter):
    """Keep torch's log lines but drop tracebacks and its per-process shutdown chatter.

    WorkerFailedError carries every traceback and exit status; formatting one in
    torch's logging imports torch._dynamo (about 0.7 s) and creates inductor cache
    folders, and "Terminating process ..." lines name internals the user never chose.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return not str(record.msg).startswith(_CHATTER)


_CHATTER = (
    "Terminating process",
    "Closing process",
    "Sending process",
    "Unable to shutdown process",
    "failed (exitcode",
)
_TORCH_FAILURE_LOGGERS = (
    "torch.distributed.elastic.multiprocessing.api",
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.agent.server.local_elastic_agent",
    "torch.multiprocessing.spawn",
)


@contextlib.contextmanager
def torch_logs_without_tracebacks() -> Iterator[None]:
    drop = _DropTraceback()
    loggers = [logging.getLogger(name) for name in _TORCH_FAILURE_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


@contextlib.contextmanager
def job_directory() -> Iterator[str]:
    """A private temp folder for one launch, removed afterwards.

    Its name carries our pid, so a later launch removes the folders of launchers
    that were killed (``kill -9``) before they could clean up.
    """
    _remove_orphaned_job_directories()
    path = tempfile.mkdtemp(prefix=f"{_rundir.JOB_PREFIX}{os.getpid()}_")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphaned_job_directories() -> None:
    folder = tempfile.gettempdir()
    for name in os.listdir(folder):
        pid = _rundir.job_folder_pid(name)
        if pid is None:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's
