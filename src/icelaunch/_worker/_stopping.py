"""``stop_requested()`` inside a rank: every rank agrees, at the same call, that a stop came.

The launcher, asked to stop (SIGTERM, Ctrl-C, ...) or passing on a preemption
notice (SIGUSR1, SIGUSR2), writes ``<run folder>/stop``; a rank that gets such
a signal itself notes it too. Each call looks for either (one ``stat``) and
agrees with every other rank through one ``all_reduce(MAX)`` of one integer on
a gloo group (the default group when it is gloo, else one made on the first
call): the answer is the same on every rank at the same call.

Every rank notes SIGUSR1 and SIGUSR2 (preemption notices; where at their default
action) from its bootstrap on. From its first call on, SIGTERM and SIGHUP are
noted too instead of ending the process, and the launcher knows the rank polls
(``<run folder>/polling-A-L``): the rank decides when to exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from icelaunch import _rundir
from icelaunch._rundir import Identity

if TYPE_CHECKING:
    from icelaunch._worker._context import WorkerContext

logger = logging.getLogger(__name__)

#: the signals every rank notes from its bootstrap on (where at their default action)
FORWARDED = _rundir.FORWARDED_SIGNALS
#: the signals a polling rank notes instead of ending (where at their default action)
NOTED_SIGNALS = ("SIGTERM", "SIGHUP", *FORWARDED)


class _State:
    run_dir: str | None = None
    who: Identity | None = None
    polling = False
    noted: signal.Signals | None = None
    agreed = False  # every rank said True: no more collectives
    group: Any = None
    lock = threading.Lock()


_state = _State()


def setup(run_dir: str | None, who: Identity | None) -> None:
    """Where this rank looks for the launcher's stop file; SIGUSR1 and SIGUSR2 (where at
    their default action) noted from now on: a preemption notice never ends a rank
    (bootstrap, once)."""
    _state.run_dir = run_dir
    _state.who = who
    if who is not None:
        _note_from_now_on(FORWARDED)


def requested(ctx: WorkerContext) -> bool:
    """Whether a stop was asked for, agreed by every rank at this same call.

    Once True it stays True, without further collectives.
    """
    if _state.agreed:
        return True
    with _state.lock:
        if not _state.polling:
            _start_polling()
    local = _state.noted is not None or _stop_file_exists()
    if ctx.world_size > 1:
        local = _agree(local, ctx)
    if local:
        _state.agreed = True
    return local


def _stop_file_exists() -> bool:
    return _state.run_dir is not None and os.path.exists(_rundir.stop_path(_state.run_dir))


def _start_polling() -> None:
    """Note stop signals from now on, then tell the launcher (in that order: a signal
    the launcher sends once it sees the file is noted, never fatal)."""
    _note_from_now_on(NOTED_SIGNALS)
    _state.polling = True
    if _state.run_dir is not None and _state.who is not None:
        path = _rundir.polling_path(_state.run_dir, _state.who.attempt, _state.who.local_rank)
        with contextlib.suppress(OSError), open(path, "w"):
            pass


def _note_from_now_on(names: tuple[str, ...]) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _note)


def _note(signum: int, frame: FrameType | None) -> None:
    if _state.noted is None:
        _state.noted = signal.Signals(signum)


def _agree(local: bool, ctx: WorkerContext) -> bool:
    """``local`` of any rank, through one all_reduce(MAX); True if a peer is gone."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "stop_requested() agrees with the other ranks through torch.distributed: "
            "call it after the default process group exists (a launched function has "
            "one; in a script call icelaunch.init_process_group() or "
            "torch.distributed.init_process_group() first)"
        )
    if _state.group is None:
        _state.group = _gloo_group(dist)
    flag = torch.tensor([int(local)], dtype=torch.int32)
    try:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_state.group)
    except Exception as exc:  # a peer ended: the job is stopping anyway
        logger.debug("stop_requested(): a peer is gone (%s); taking it as a stop", exc)
        return True
    return bool(flag.item())


def _gloo_group(dist: Any) -> Any:
    """The default group if it is gloo (no new connections), else a new gloo group."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")
