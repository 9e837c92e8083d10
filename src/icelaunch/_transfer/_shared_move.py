"""Move a CPU storage to unnamed shared memory in place, holding its bytes once.

``Tensor.share_memory_()`` copies the whole storage into a new segment and only then
frees the old memory: for a moment the process holds the data twice, and every new
page is taken by a fault. :func:`move_to_memfd` writes the storage into a ``memfd``
chunk by chunk (the kernel allocates the file's pages as it writes them) and, where
the old memory is the storage's own allocation, gives each chunk's pages back as soon
as they are written. Then the storage's data pointer is swapped to a mapping of the
file, exactly as ``share_memory_()`` does, so every tensor viewing the storage sees
the shared pages and writes are seen by every process that maps them.

:func:`move_to_pack` does the same into a part of a file many storages share
(``_packs``); :func:`copy_to_pack` writes a storage there without moving it.

While the move runs, other threads must not use the tensor (as with
``share_memory_()``, whose old memory is freed under them): a chunk already given
back reads as zeros until the swap.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from typing import Any

from icelaunch import _torch_internals
from icelaunch._transfer import _packs

CHUNK_BYTES = 16 << 20
_MADV_DONTNEED = 4


def move_to_memfd(storage: Any) -> tuple[int, int]:
    """Move ``storage`` (CPU, not yet shared) to a memfd in place; its descriptor
    and size as torch gives them for a shared storage (the storage keeps the
    descriptor open while it lives).

    Falls back to torch's own move (``share_memory_()``) where torch cannot swap.
    """
    if not _torch_internals.can_swap(type(storage)):
        return _torch_internals.share_fd(storage)
    nbytes = int(storage.nbytes())
    address = int(storage.data_ptr())
    fd = os.memfd_create("icelaunch-shared", os.MFD_CLOEXEC)
    try:
        given_back = _write_releasing(fd, address, nbytes, release=_owns_its_memory(storage))
        try:
            _torch_internals.swap_to_shared(storage, fd, nbytes)  # frees the old memory
        except BaseException:
            _restore(fd, address, given_back)  # the storage stays where it was
            raise
    finally:
        os.close(fd)
    return _torch_internals.share_fd(storage)  # the mapping's own descriptor, no copy


def move_to_pack(storage: Any, pack: _packs.Pack, offset: int) -> _packs.Region:
    """Move ``storage`` (CPU, not yet shared) in place to ``pack`` at ``offset``; the
    region it lives in now (its pages given back when the storage is freed)."""
    nbytes = int(storage.nbytes())
    address = int(storage.data_ptr())
    given_back = _write_releasing(
        pack.fd, address, nbytes, release=_owns_its_memory(storage), at=offset
    )
    try:
        buffer, region = _packs.map_region(pack.fd, offset, nbytes, pack=pack, owned=True)
        _torch_internals.swap_storage(storage, _packs.storage_over(buffer))  # frees the old
    except BaseException:
        _restore(pack.fd, address, given_back, at=offset)  # the storage stays where it was
        raise
    _packs.remember(region)
    return region


def copy_to_pack(storage: Any, pack: _packs.Pack, offset: int) -> None:
    """Write ``storage``'s bytes to ``pack`` at ``offset``; the storage stays as it is."""
    address, nbytes = int(storage.data_ptr()), int(storage.nbytes())
    _write_releasing(pack.fd, address, nbytes, release=False, at=offset)


def _owns_its_memory(storage: Any) -> bool:
    """Whether the storage's memory is its allocator's, with no other owner.

    Storages made over foreign memory (``torch.from_numpy``, ``frombuffer``, a
    private file mapping) are not resizable; pinned memory is locked and registered
    with the GPU driver. Their pages are never given back early.
    """
    import torch

    cuda_in_use = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    pinned = cuda_in_use and storage.is_pinned()  # no CUDA: nothing pinned (and no init)
    return bool(storage.resizable()) and not pinned


def _write_releasing(
    fd: int, address: int, nbytes: int, *, release: bool, at: int = 0
) -> tuple[int, int]:
    """Write ``nbytes`` at ``address`` into ``fd`` at offset ``at``; with ``release``,
    give back each whole page of the source once it is written. Returns the address
    range given back; if the write fails, that range is read back first."""
    source = (ctypes.c_char * nbytes).from_address(address)
    view = memoryview(source).cast("B")
    page = mmap.PAGESIZE
    first = released = -(-address // page) * page  # pages partly outside the storage stay
    try:
        done = 0
        while done < nbytes:
            end = min(nbytes, done + CHUNK_BYTES)
            while done < end:
                done += os.pwrite(fd, view[done:end], at + done)
            if release:
                upto = (address + done) // page * page
                if upto > released:
                    _madvise_dontneed(released, upto - released)
                    released = upto
    except BaseException:
        _restore(fd, address, (first, released), at=at)
        raise
    finally:
        view.release()
    return first, released


def _restore(fd: int, address: int, given_back: tuple[int, int], at: int = 0) -> None:
    """Read the range ``given_back`` (addresses) back from ``fd``, where the bytes
    starting at ``address`` were written at offset ``at``."""
    start, end = given_back
    if end <= start:
        return
    into = memoryview((ctypes.c_char * (end - start)).from_address(start)).cast("B")
    try:
        done = 0
        while done < into.nbytes:
            done += os.preadv(fd, [into[done:]], at + start - address + done)
    finally:
        into.release()


_libc: Any = None


def _madvise_dontneed(address: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.madvise(address, length, _MADV_DONTNEED)  # a refusal only keeps the pages
