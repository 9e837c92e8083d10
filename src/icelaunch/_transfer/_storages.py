"""Where each tensor storage of a send goes, and how a receiver maps it again.

Sender (:class:`Placement`): while the job is pickled, every large CPU storage
gets an index; after, each one without a home yet is placed:

- already in shared memory with a descriptor (``share_memory_()``, or moved by an
  earlier send): referred to as it is, nothing copied;
- moved (arguments), under ``PACK_BELOW`` bytes: into one pack for the whole send
  (``_packs``), in place: one descriptor, open while those tensors live;
- moved, ``PACK_BELOW`` or more: into a memfd of its own, in place, as
  ``share_memory_()`` gives it (``t.is_shared()``; one descriptor while it lives);
- copied (results): all into one pack, the worker's tensors untouched.

Before anything moves, the descriptors it will keep are checked against the
process's open-file limit: past it, :class:`OpenFileLimitError` names the limit
and nothing has changed. Receiver (:class:`Mapper`): each file opened once
through ``/proc/<pid>/fd``, each storage a mapping of its own part of it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from icelaunch import _torch_internals
from icelaunch._transfer import _packs
from icelaunch._transfer._shared_move import copy_to_pack, move_to_memfd, move_to_pack

#: storages moved from this size on get a file of their own (``share_memory_()``'s way)
PACK_BELOW = 64 << 20
#: descriptors left free for the launch itself (pipes, sockets, log files)
RESERVED_FDS = 64


class OpenFileLimitError(OSError):
    """Sending the arguments would keep more files open than the process may open."""


@dataclasses.dataclass(frozen=True)
class FdRef:
    """``nbytes`` at ``offset`` of descriptor ``fd`` of process ``pid``, whose inode
    (checked, against reuse) is ``inode``."""

    pid: int
    fd: int
    inode: int
    nbytes: int
    offset: int = 0


class Placement:
    """The storages of one send: indexed while pickling, placed after."""

    def __init__(self, *, move: bool) -> None:
        self.move = move
        self.refs: list[FdRef | None] = []
        self._storages: list[Any] = []
        self._index: dict[tuple[int, int], int] = {}

    def index(self, storage: Any) -> int:
        """The index of ``storage`` in this send (one per storage, however many views)."""
        key = (int(storage.data_ptr()), int(storage.nbytes()))
        if key not in self._index:
            self._index[key] = len(self.refs)
            self.refs.append(_home(storage) if self.move else None)
            self._storages.append(storage)
        return self._index[key]

    def place(self, keep: list[Any], extra_files: int) -> list[FdRef]:
        """Give every storage a home; ``keep`` gets what must live as long as the payload.

        Raises:
            OpenFileLimitError: the files to keep open do not fit the open-file limit
                (``extra_files``: those the send opens besides).
        """
        pending = [i for i, ref in enumerate(self.refs) if ref is None]
        packs = self.move and _torch_internals.can_swap(_untyped_storage())
        alone = [i for i in pending if self.move and (not packs or self._size(i) >= PACK_BELOW)]
        packed = [i for i in pending if i not in set(alone)]
        if alone:
            _check_open_files(len(alone) + bool(packed) + extra_files, len(alone))
        for i in alone:
            fd, nbytes = move_to_memfd(self._storages[i])
            keep.append(self._storages[i])
            self.refs[i] = FdRef(os.getpid(), fd, os.fstat(fd).st_ino, nbytes)
        if packed:
            offsets, total = _packs.layout([self._size(i) for i in packed])
            pack = _packs.Pack(total)
            keep.append(pack)
            for i, offset in zip(packed, offsets, strict=True):
                storage = self._storages[i]
                if self.move:
                    move_to_pack(storage, pack, offset)
                else:
                    copy_to_pack(storage, pack, offset)
                self.refs[i] = FdRef(os.getpid(), pack.fd, pack.inode, self._size(i), offset)
        self._storages.clear()  # no reference to the caller's tensors once placed
        placed = [ref for ref in self.refs if ref is not None]
        assert len(placed) == len(self.refs)
        return placed

    def _size(self, i: int) -> int:
        return int(self._storages[i].nbytes())


def _home(storage: Any) -> FdRef | None:
    """Where ``storage`` is shared already (moved by an earlier send, or by torch);
    None if it has to move."""
    region = _packs.region_of(storage)
    if region is not None and region.pack is not None and region.pack.fd >= 0:
        pack = region.pack
        return FdRef(os.getpid(), pack.fd, pack.inode, region.length, region.offset)
    if storage.is_shared():
        fd, nbytes = _torch_internals.share_fd(storage)
        if fd >= 0:  # a storage mapped from a file keeps no descriptor
            return FdRef(os.getpid(), fd, os.fstat(fd).st_ino, nbytes)
    return None


def _untyped_storage() -> type:
    import torch

    return torch.UntypedStorage


def _check_open_files(needed: int, alone: int) -> None:
    spare, limit, in_use = _packs.spare_descriptors()
    if needed <= spare - RESERVED_FDS:
        return
    raise OpenFileLimitError(
        f"sending these arguments needs {needed} more open files ({alone} tensor(s) of "
        f"{PACK_BELOW >> 20} MiB or more, each in shared memory of its own, whose descriptor "
        f"stays open while the tensor lives, as with share_memory_()), but this process has "
        f"{in_use} files open of its open-file limit of {limit} (ulimit -n), and the launch "
        f"needs {RESERVED_FDS} more. Raise the limit, e.g. `ulimit -n 65536` before "
        f"starting Python, or resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)) with "
        f"hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; nothing was moved"
    )


class Mapper:
    """A receiver's side: each sender's file opened once, each storage mapped on its own.

    ``owned``: this process is the only one to use the data from now on (a result):
    each storage's pages are given back when it is freed.
    """

    def __init__(self, refs: list[FdRef], *, owned: bool) -> None:
        self.refs = refs
        self.owned = owned
        self._files: dict[tuple[int, int], int] = {}
        self._storages: dict[int, Any] = {}

    def storage(self, index: int) -> Any:
        """The storage of ``refs[index]``, mapped once per receive."""
        if index not in self._storages:
            ref = self.refs[index]
            fd = self._open(ref)
            buffer, _ = _packs.map_region(fd, ref.offset, ref.nbytes, pack=None, owned=self.owned)
            self._storages[index] = _packs.storage_over(buffer)
        return self._storages[index]

    def _open(self, ref: FdRef) -> int:
        key = (ref.pid, ref.fd)
        if key not in self._files:
            self._files[key] = open_ref(ref)
        return self._files[key]

    def close(self) -> None:
        """Close the files (the mappings stay)."""
        while self._files:
            os.close(self._files.popitem()[1])


def open_ref(ref: FdRef) -> int:
    """Our own descriptor of the sender's file, checked to be the one it sent."""
    try:
        fd = os.open(f"/proc/{ref.pid}/fd/{ref.fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeError(
            f"cannot open the shared memory of process {ref.pid} (fd {ref.fd}): {exc}; "
            f"the sending process must be alive and of the same user, with /proc mounted"
        ) from exc
    if os.fstat(fd).st_ino != ref.inode:
        os.close(fd)
        raise RuntimeError(f"the shared memory of process {ref.pid} was freed before use")
    return fd
