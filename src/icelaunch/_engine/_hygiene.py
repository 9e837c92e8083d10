"""Leave the launching process as it was: environment, temp folder, logs (its signal
handlers: ``_signals``)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

from icelaunch import _rundir


@contextlib.contextmanager
def carried(variables: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """Set ``variables`` in this process's environment for the block, then put each
    back as it was, unless something else changed it meanwhile (another launch in
    another thread): only what this launch set is undone, nothing else is touched."""
    before = {name: os.environ.get(name) for name, _ in variables}
    for name, value in variables:
        os.environ[name] = value
    try:
        yield
    finally:
        for name, value in variables:
            if os.environ.get(name) != value:
                continue
            old = before[name]
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


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
    "Received %s death signal",  # icelaunch says what the stop does (its grace) itself
    # from a thread: our workers die with the launcher all the same (_worker: tied to it)
    "Failed to register signal handlers since torchelastic is running on a child thread",
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
