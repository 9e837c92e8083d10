"""Arguments and results through shared memory, sent once, never copied per worker.

Contract: ``send(obj) -> Sent`` (``Sent.payload`` is small bytes, ``Sent.close()``
frees what only the payload needed), ``receive(payload) -> obj`` in any process
of the same user while the sender is alive.

What travels how (objects below ``MIN_SHARED_BYTES`` are pickled as usual):

- CPU tensors (also inside containers, dataclasses and modules: a parameter
  pickles as its ``.data``): as in ``torch.multiprocessing``, the sender's
  storage *moves* to shared memory, in place (as ``Tensor.share_memory_()``
  does, without holding the bytes twice: ``_shared_move``), and receivers map
  the same pages: writes are seen by everyone, the sender included. Storages
  under 64 MiB share one file per send (``_storages``, ``_packs``), so that
  many tensors do not hold one open file each.
- numpy arrays, ``bytearray``, ``memoryview`` and ``bytes``: copied once into
  one unnamed shared file; receivers map it copy-on-write, so their writes stay
  their own (``bytes`` and ``bytearray`` are copied out of it when rebuilt, being
  objects that own their memory; arrays and memoryviews are not).
- CUDA tensors are refused with :class:`UnsupportedTransferError`.

Shared memory here never has a name in ``/dev/shm``: torch unlinks its segment
right after creating it and the other files are ``memfd``s. Receivers open the
sender's descriptor through ``/proc/<pid>/fd/<fd>`` (checking its inode), so
nothing outlives the processes that map it, whatever way they end.
"""

from __future__ import annotations

import dataclasses
import io
import mmap
import os
import pickle
import sys
from typing import Any

from icelaunch._transfer._pickler import CodePickler
from icelaunch._transfer._storages import FdRef, Mapper, Placement, open_ref

MIN_SHARED_BYTES = 1 << 20
_ALIGN = 64
_PLAIN = frozenset({int, float, str, bool, type(None), tuple, list, dict, set, frozenset})


class UnsupportedTransferError(TypeError):
    """An argument or result that cannot travel to another process (a CUDA tensor)."""


@dataclasses.dataclass
class Sent:
    """What :func:`send` made: the payload and what keeps its shared memory alive."""

    payload: bytes
    keep: list[Any] = dataclasses.field(default_factory=list)
    fds: list[int] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        """Free the files only the payload needed (moved tensors live with their storage)."""
        while self.fds:
            os.close(self.fds.pop())
        self.keep.clear()

    @property
    def shared(self) -> bool:
        """Whether anything went through shared memory (False: the pickle fast path)."""
        return bool(self.keep or self.fds)


def send(
    obj: Any,
    min_bytes: int = MIN_SHARED_BYTES,
    *,
    move: bool = True,
    refuse_cuda: bool = True,
    by_reference: bool = False,
) -> Sent:
    """Pickle ``obj`` (cloudpickle: ``__main__`` functions by value), large data shared.

    Args:
        move: large CPU tensors move to shared memory in place (torch.multiprocessing's
            semantics); False copies them into files of their own instead.
        refuse_cuda: raise for CUDA tensors (False: pickle them by value).
        by_reference: plain pickle, which fails for classes and functions that
            cannot be imported by name (instead of sending them by value).

    Raises:
        UnsupportedTransferError: ``obj`` holds a CUDA tensor.
    """
    buf = io.BytesIO()
    sent = Sent(b"")
    kind = _PlainPickler if by_reference else _Pickler
    pickler = kind(buf, min_bytes, move=move, refuse_cuda=refuse_cuda)
    try:
        pickler.dump(obj)
        found, placement = pickler.found, pickler.placement
        refs = placement.place(sent.keep, extra_files=bool(found.views))
        blob = _write_file(found.views, sent) if found.views else None
    except BaseException:
        sent.close()
        raise
    finally:
        pickler.clear_memo()  # drops its references to everything pickled
    layout = _layout(found.views)
    sent.payload = pickle.dumps((blob, layout, found.out_of_band, refs, buf.getvalue()), protocol=5)
    return sent


def receive(payload: bytes, *, owned: bool = False) -> Any:
    """The object :func:`send` pickled into ``payload``, mapping what it shared.

    ``owned``: no other process uses the data any more (a result): the memory of
    each tensor is given back as soon as it is freed.
    """
    blob, layout, out_of_band, refs, data = pickle.loads(payload)
    views: list[memoryview] = []
    if blob is not None:
        fd = open_ref(blob)
        try:
            mapped = mmap.mmap(fd, blob.nbytes, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        whole = memoryview(mapped)
        views = [whole[off : off + n] for off, n in layout]
    mapper = Mapper(refs, owned=owned)
    try:
        unpickler = _Unpickler(io.BytesIO(data), views, [views[i] for i in out_of_band], mapper)
        return unpickler.load()
    finally:
        mapper.close()


def _receive_result(payload: bytes) -> Any:
    return receive(payload, owned=True)


class _Blobs:
    """Large buffers taken out of a pickle stream, in the order they appeared."""

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        self.views: list[memoryview] = []
        self.out_of_band: list[int] = []  # index in views of each out-of-band buffer

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        """numpy arrays (and explicit PickleBuffers): large ones out of band (return False)."""
        try:
            raw = buf.raw()
        except (BufferError, ValueError):
            return True
        if raw.nbytes < self.min_bytes:
            return True
        self.out_of_band.append(len(self.views))
        self.views.append(raw)
        return False


class _Sharing:
    """A pickler's part that takes large tensors and buffers out of the stream."""

    def __init__(self, file: io.BytesIO, min_bytes: int, *, move: bool, refuse_cuda: bool) -> None:
        self.found = _Blobs(min_bytes)  # no reference back: the pickler is freed at once
        super().__init__(file, protocol=5, buffer_callback=self.found)  # type: ignore[call-arg]
        self.min_bytes = min_bytes
        self.refuse_cuda = refuse_cuda
        self.placement = Placement(move=move)

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _PLAIN:
            return None
        if kind is bytes or kind is bytearray or kind is memoryview:
            return self._bytes_like(obj)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(obj, torch.Tensor):
            return self._tensor(obj)
        return None

    def _bytes_like(self, obj: bytes | bytearray | memoryview) -> Any:
        view = memoryview(obj)
        if view.nbytes < self.min_bytes or not view.contiguous:
            return None
        self.found.views.append(view.cast("B"))
        index = len(self.found.views) - 1
        if type(obj) is memoryview:
            return ("memoryview", index, view.format, view.shape)
        return (type(obj).__name__, index)

    def _tensor(self, obj: Any) -> Any:
        if obj.device.type == "cuda" and self.refuse_cuda:
            raise UnsupportedTransferError(_CUDA_MESSAGE.format(shape=tuple(obj.shape)))
        import torch

        if type(obj) is not torch.Tensor or not _shareable(obj, torch):
            return None  # a Parameter pickles as its .data, which comes back here
        storage = obj.untyped_storage()
        if storage.nbytes() < self.min_bytes:
            return None
        index = self.placement.index(storage)
        layout = (obj.dtype, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return ("tensor", index, layout, obj.requires_grad)


_CUDA_MESSAGE = (
    "a CUDA tensor of shape {shape} cannot be an argument of a launched function: "
    "each worker owns its own GPU. Pass it on the CPU (`t.cpu()`: it then reaches every "
    "worker through shared memory, without copies) and move it in the worker with "
    "`t.to(launcher.assigned_device)`"
)


class _Pickler(_Sharing, CodePickler):  # type: ignore[misc]
    """cloudpickle (code sent by value keeps its real file name), large data shared."""


class _PlainPickler(_Sharing, pickle.Pickler):
    """pickle (classes and functions by reference only), large data shared."""


def _shareable(obj: Any, torch: Any) -> bool:
    return bool(
        obj.device.type == "cpu"
        and obj.layout == torch.strided
        and not obj.is_quantized
        and not obj.is_conj()
        and not obj.is_neg()
        and (obj.is_leaf or not obj.requires_grad)
    )


class _Unpickler(pickle.Unpickler):
    def __init__(
        self, file: io.BytesIO, views: list[memoryview], buffers: list[Any], mapper: Mapper
    ) -> None:
        super().__init__(file, buffers=buffers)
        self._views = views
        self._mapper = mapper

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "bytes":
            return bytes(self._views[pid[1]])
        if kind == "bytearray":
            return bytearray(self._views[pid[1]])
        if kind == "memoryview":
            return self._views[pid[1]].cast(pid[2], pid[3])
        if kind == "tensor":
            return self._tensor(*pid[1:])
        raise pickle.UnpicklingError(f"unknown shared object {kind!r}")

    def _tensor(self, index: int, layout: tuple[Any, ...], requires_grad: bool) -> Any:
        import torch

        storage = self._mapper.storage(index)
        dtype, offset, size, stride = layout
        tensor = torch.empty(0, dtype=dtype).set_(storage, offset, size, stride)
        return tensor.requires_grad_(requires_grad)


def _layout(blobs: list[memoryview]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for view in blobs:
        pos = -(-pos // _ALIGN) * _ALIGN
        spans.append((pos, view.nbytes))
        pos += view.nbytes
    return spans


def _write_file(blobs: list[memoryview], sent: Sent) -> FdRef:
    """One memfd holding every blob at its aligned offset, owned by ``sent``."""
    spans = _layout(blobs)
    total = max(1, spans[-1][0] + spans[-1][1])
    fd = os.memfd_create("icelaunch-transfer", os.MFD_CLOEXEC)
    sent.fds.append(fd)
    os.ftruncate(fd, total)
    for view, (off, _) in zip(blobs, spans, strict=True):
        _pwrite_all(fd, view, off)
    return FdRef(os.getpid(), fd, os.fstat(fd).st_ino, total)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < view.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)


class Shared:
    """A value in transit; unpickling it (e.g. from torch's return queue) gives the value."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return _receive_result, (self.payload,)


_results: list[Sent] = []  # a worker's results stay mapped until it exits


def as_result(value: Any) -> Shared:
    """``value`` ready to be returned to the launcher, large data shared.

    The worker must live until the launcher has unpickled it, as torch's workers
    do: they wait for the launcher to read every return value before exiting.
    CUDA tensors in results are pickled by value, as before. Classes and
    functions go by reference where pickle can, else by value (cloudpickle).
    """
    try:  # by reference where it can: a forked worker's __main__ classes are the caller's
        sent = send(value, move=False, refuse_cuda=False, by_reference=True)
    except Exception:
        sent = send(value, move=False, refuse_cuda=False)
    if sent.shared:
        _results.append(sent)
    return Shared(sent.payload)
