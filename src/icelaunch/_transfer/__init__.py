"""Arguments and results through shared memory, sent once, never copied per worker.

Launcher side: :func:`send` pickles the job (functions of ``__main__`` by value,
with real file names: ``_pickler``) and moves large tensors to shared memory in
place (``_shared_move``). Worker side: :func:`receive` maps them again;
:func:`as_result` sends a return value back the same way.

Data flow::

    caller's tensor --_shared_move--> memfd (pages given back as written)
    job --send--> payload bytes --torch's queue/args--> receive --> job, tensors mapped
    worker value --as_result--> Shared (memfd) --torch's return queue--> caller maps it

The contract and what travels how are stated in ``_send``.
"""

from __future__ import annotations

from icelaunch._transfer._send import (
    MIN_SHARED_BYTES,
    Sent,
    Shared,
    UnsupportedTransferError,
    as_result,
    receive,
    send,
)

__all__ = [
    "MIN_SHARED_BYTES",
    "Sent",
    "Shared",
    "UnsupportedTransferError",
    "as_result",
    "receive",
    "send",
]
