"""Many storages in one memfd: one descriptor per send, not one per tensor.

A :class:`Pack` is one ``memfd`` holding storages at page-aligned offsets. Each
storage then lives in a :class:`Region`, a shared mapping of its own part of the
file (:func:`map_region`), made into a torch storage by :func:`storage_over` (a
storage over that mapping: the mapping lives exactly as long as the storage).
The pack's descriptor stays open while any of its regions is mapped by the
process that made it, so a later send of the same tensor refers to it again
without copying (:func:`region_of`); receivers open it once through
``/proc/<pid>/fd`` and keep only their mappings.

A region whose process owns the data (the sender's moved tensor, the launcher's
result) gives its pages back to the system when its storage is freed
(``MADV_REMOVE``): the pack does not hold the memory of tensors already freed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import resource
import weakref
from typing import Any

PAGE = mmap.PAGESIZE
_MADV_REMOVE = 9
_PROT = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_FAILED = (1 << 64) - 1  # (void *) -1
_moved: dict[int, Region] = {}  # address -> the region of a storage this process moved


class Pack:
    """One memfd for many storages; closed when the last of its regions is unmapped."""

    def __init__(self, nbytes: int) -> None:
        self.fd = os.memfd_create("icelaunch-shared", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, max(1, nbytes))
            self.inode = os.fstat(self.fd).st_ino
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


@dataclasses.dataclass(eq=False)
class Region:
    """A shared mapping of ``length`` bytes at ``offset`` of a file (``pack``: ours,
    kept open while the region is mapped). ``owned``: its pages are given back
    when it is unmapped (no other process needs them then)."""

    address: int
    length: int
    offset: int
    pack: Pack | None
    owned: bool
    pid: int = dataclasses.field(default_factory=os.getpid)  # a fork's copy owns nothing


def map_region(
    fd: int, offset: int, length: int, *, pack: Pack | None, owned: bool
) -> tuple[Any, Region]:
    """A buffer over ``length`` bytes of ``fd`` at ``offset`` (a multiple of the page
    size), mapped shared; unmapped when the buffer is freed.

    Mapped with ``mmap(2)`` itself: Python's ``mmap`` object keeps a duplicate of the
    descriptor for each mapping, one open file per tensor again.
    """
    libc = _c_library()
    address = libc.mmap(None, length, _PROT, mmap.MAP_SHARED, fd, offset)
    if address in (None, _MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"cannot map {length} bytes of shared memory: {os.strerror(err)}")
    buffer = (ctypes.c_char * length).from_address(address)
    region = Region(address, length, offset, pack, owned)
    weakref.finalize(buffer, _unmap, region).atexit = False  # tensors may outlive atexit
    return buffer, region


def _unmap(region: Region) -> None:
    libc = _c_library()
    length = -(-region.length // PAGE) * PAGE
    if region.owned and region.pid == os.getpid():
        libc.madvise(region.address, length, _MADV_REMOVE)  # a refusal only keeps the pages
    libc.munmap(region.address, length)
    if _moved.get(region.address) is region:
        del _moved[region.address]


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """Page-aligned offsets of storages of ``sizes`` bytes in one pack, and its size.

    >>> layout([5000, 1, 4096])
    ([0, 8192, 12288], 16384)
    """
    offsets, end = [], 0
    for size in sizes:
        offsets.append(end)
        end += -(-size // PAGE) * PAGE
    return offsets, end


def storage_over(buffer: Any) -> Any:
    """A CPU storage whose data is ``buffer`` (of :func:`map_region`; it keeps it mapped)."""
    import torch

    return torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()


def remember(region: Region) -> None:
    """Note ``region`` as the home of a storage this process moved there."""
    _moved[region.address] = region


def region_of(storage: Any) -> Region | None:
    """The region of ours that ``storage`` lives in (moved by an earlier send), if any."""
    region = _moved.get(int(storage.data_ptr()))
    if region is None or region.pack is None or region.length != int(storage.nbytes()):
        return None
    return region


def spare_descriptors() -> tuple[int, int, int]:
    """(descriptors this process may still open, its open-file limit, open now)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    if soft == resource.RLIM_INFINITY:
        return 1 << 30, soft, in_use
    return soft - in_use, soft, in_use


_libc: Any = None


def _c_library() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int64,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = libc
    return _libc
