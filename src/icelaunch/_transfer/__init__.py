"""Arguments and results through shared memory, sent once, never copied per worker.

Launcher side: :func:`send` pickles the job (functions of ``__main__`` by value,
with real file names: ``_pickler``) and moves large tensors to shared memory in
place (``_storages`` decides where, ``_shared_move`` moves): tensors under 64 MiB
into one file per send (``_packs``), larger ones into a file each. Worker side:
:func:`receive` maps them again; :func:`as_result` sends a return value back the
same way.

Data flow::

    caller's tensors --_storages/_shared_move--> one pack memfd (+ a memfd per big one)
    job --send--> payload bytes --torch's queue/args--> receive --> job, tensors mapped
    worker value --as_result--> Shared (one pack) --torch's return queue--> caller maps it

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
from icelaunch._transfer._storages import OpenFileLimitError

__all__ = [
    "MIN_SHARED_BYTES",
    "OpenFileLimitError",
    "Sent",
    "Shared",
    "UnsupportedTransferError",
    "as_result",
    "receive",
    "send",
]
