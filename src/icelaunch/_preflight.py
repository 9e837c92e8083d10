"""Checks and fix-ups in the launching process before any worker starts.

Interactive sessions (notebooks, ``python -``, the REPL) break assumptions
that torch's start methods make about the launching process.
"""

from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import sys
from collections.abc import Iterator

from icelaunch._spec import LaunchSpec


@contextlib.contextmanager
def prepared(spec: LaunchSpec) -> Iterator[None]:
    """Check that ``spec`` can start workers from this process; fit ``__main__`` for them.

    Raises:
        RuntimeError: ``start_method='fork'`` after this process initialised CUDA.
    """
    check_fork_after_cuda(spec.start_method)
    with _main_without_phantom_file():
        yield


def check_fork_after_cuda(start_method: str) -> None:
    """Refuse to fork a process that has initialised CUDA: its children cannot use it.

    Raises:
        RuntimeError: ``start_method`` is ``fork`` and CUDA is initialised here.
    """
    torch = sys.modules.get("torch")  # CUDA is initialised through torch, if at all
    if start_method != "fork" or torch is None or not torch.cuda.is_initialized():
        return
    raise RuntimeError(
        "start_method='fork' cannot be used: this process has already initialised CUDA, "
        "and forked workers cannot use it ('Cannot re-initialize CUDA in forked "
        "subprocess'). Use start_method='spawn' (the default), e.g. "
        "ElasticLauncher('cuda:*', start_method='spawn'), or launch before touching CUDA"
    )


@contextlib.contextmanager
def _main_without_phantom_file() -> Iterator[None]:
    """Hide a ``__main__.__file__`` that names no file (``<stdin>`` under ``python -``).

    ``spawn`` and ``forkserver`` workers re-run the launcher's main script from
    that path before anything else, so every worker would fail on the missing
    file. Functions defined in such a ``__main__`` travel to the workers by
    value, so they do not need it.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str) or _names_file(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _names_file(path: str) -> bool:
    """Whether ``path`` exists as multiprocessing resolves it (relative to the start dir).

    >>> _names_file("<stdin>"), _names_file(__file__)
    (False, True)
    """
    start_dir = getattr(multiprocessing.process, "ORIGINAL_DIR", None) or os.getcwd()
    return os.path.isfile(os.path.join(start_dir, path))
