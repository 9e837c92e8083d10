"""Arguments and results through shared memory, without launching: ``send``/``receive``
in this process, integrity, write semantics, the CUDA refusal, giving pages back."""

from __future__ import annotations

import hashlib
import os
import weakref
from typing import Any

import numpy as np
import pytest
import torch
from packaging.version import Version

from helpers import FakeCudaTensor, digest, make_kinds
from icelaunch import _transfer
from icelaunch._transfer import _packs, _shared_move

pytestmark = pytest.mark.timeout(180)
# torch 2.13 (constraints.txt) has UntypedStorage._swap_data_ptr_; older torch (2.11 on
# the GPU machines) moves with share_memory_() instead, which holds the bytes twice
MOVES_IN_CHUNKS = pytest.mark.skipif(
    Version(torch.__version__).release < (2, 13),
    reason="torch before 2.13 moves with share_memory_() (no _swap_data_ptr_)",
)
MB = 1 << 20


KIND_NAMES = list(make_kinds(0))


def in_shared_memory(t: torch.Tensor) -> bool:
    """Whether ``t``'s data lives in shared memory: torch's own (``is_shared()``), or
    a file of icelaunch's that many storages share (``_packs``)."""
    if t.is_shared():
        return True
    address = t.untyped_storage().data_ptr()
    with open("/proc/self/maps") as fh:
        for line in fh:
            span, *_, path = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                return "/memfd:icelaunch-shared" in path
    return False


# ---------------------------------------------------------------- without launching


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_kind_round_trips_intact(kind: str) -> None:
    obj = make_kinds(1)[kind]
    expected = digest(obj)
    sent = _transfer.send(obj)
    try:
        assert sent.shared == (kind != "small")
        assert digest(_transfer.receive(sent.payload)) == expected
    finally:
        sent.close()


def test_tiny_objects_stay_on_the_pickle_fast_path() -> None:
    sent = _transfer.send({"lr": 0.1, "ids": list(range(100)), "t": torch.ones(1000)})
    assert not sent.shared and not sent.fds
    assert len(sent.payload) < 10_000


def test_tensors_move_to_shared_memory_and_writes_are_seen_by_all() -> None:
    t = torch.zeros(MB)
    sent = _transfer.send([t, t[10:]])
    assert in_shared_memory(t)  # the caller's own storage moved, as with torch.multiprocessing
    first, view = _transfer.receive(sent.payload)
    second, _ = _transfer.receive(sent.payload)
    first[10] = 5.0
    assert t[10] == 5.0 and view[0] == 5.0 and second[10] == 5.0
    assert first.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()
    sent.close()
    assert t[10] == 5.0  # the caller's tensor lives on after the payload is closed


def test_the_caller_frees_its_tensor_as_soon_as_it_drops_it() -> None:
    t = torch.zeros(MB)
    alive = weakref.ref(t)
    _transfer.send({"t": t}).close()
    del t  # no garbage collection needed: nothing of the send refers to it
    assert alive() is None


def test_arrays_and_buffers_are_copy_on_write() -> None:
    arr = np.zeros(MB // 8)
    raw = bytearray(2 * MB)
    sent = _transfer.send((arr, raw, memoryview(raw)))
    got_arr, got_raw, got_view = _transfer.receive(sent.payload)
    other_arr, _, _ = _transfer.receive(sent.payload)
    got_arr[0] = 7
    got_raw[0] = 7
    got_view[1] = 7
    assert arr[0] == 0 and other_arr[0] == 0 and raw[0] == 0 and raw[1] == 0
    sent.close()


def test_results_copy_instead_of_moving() -> None:
    t = torch.ones(MB)
    sent = _transfer.send(t, move=False)
    assert not t.is_shared()
    got = _transfer.receive(sent.payload)
    got[0] = 3.0
    assert t[0] == 1.0 and torch.equal(got[1:], t[1:])
    sent.close()


def test_close_frees_the_files() -> None:
    sent = _transfer.send((np.ones(MB), b"x" * MB))
    fds = list(sent.fds)
    assert fds and all(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:") for fd in fds)
    sent.close()
    assert not sent.fds
    with pytest.raises(RuntimeError, match="must be alive"):
        _transfer.receive(sent.payload)


def test_cuda_tensors_are_refused_with_what_to_do() -> None:
    fake = torch.ones(4).as_subclass(FakeCudaTensor)
    with pytest.raises(_transfer.UnsupportedTransferError, match=r"t\.cpu\(\).*assigned_device"):
        _transfer.send({"x": [fake]})


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


def test_a_move_gives_the_old_pages_back_as_it_writes() -> None:
    """The caller holds the bytes once: each written chunk's source pages are freed."""
    t = torch.arange(32 * MB, dtype=torch.int32)  # 128 MB, every page touched
    expected = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    fd = os.memfd_create("test-move")
    try:
        before = _rss_anon()
        _shared_move._write_releasing(fd, t.data_ptr(), 128 * MB, release=True)
        given_back = before - _rss_anon()
        assert given_back > 120 * MB, f"only {given_back / MB:.0f} MB of 128 MB given back"
        assert hashlib.sha256(os.pread(fd, 128 * MB, 0)).hexdigest() == expected
        assert not t[2048 : 4 * MB].any()  # given back: reads as zeros (past the first page)
    finally:
        os.close(fd)


@MOVES_IN_CHUNKS
@pytest.mark.parametrize("where", ["write", "mapping"])
def test_a_move_that_fails_midway_leaves_the_tensor_as_it_was(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of shared memory after some chunks were given back, or mapping the file
    fails after all were: the given-back bytes come back."""
    t = torch.randn(4 * MB)
    expected = t.clone()
    real_pwrite, calls = os.pwrite, []

    def failing_pwrite(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    def failing_map(*args: Any) -> Any:
        raise RuntimeError("unable to mmap: Cannot allocate memory")

    monkeypatch.setattr(_shared_move, "CHUNK_BYTES", 2 * MB)
    if where == "write":
        monkeypatch.setattr(_shared_move.os, "pwrite", failing_pwrite)
    else:
        monkeypatch.setattr(torch.UntypedStorage, "_new_shared_fd_cpu", failing_map)
        monkeypatch.setattr(_packs, "storage_over", failing_map)  # storages under 64 MiB
    with pytest.raises((OSError, RuntimeError), match=r"No space left|unable to mmap"):
        _transfer.send(t)
    assert len(calls) == (3 if where == "write" else 0)
    assert not in_shared_memory(t) and torch.equal(t, expected)


def test_a_moved_tensor_keeps_its_values_views_and_writes() -> None:
    t = torch.randn(2 * MB)
    expected, view = t.clone(), t[5:]
    sent = _transfer.send({"t": t})
    assert in_shared_memory(t) and torch.equal(t, expected) and torch.equal(view, expected[5:])
    got = _transfer.receive(sent.payload)["t"]
    got[5] = 42.0
    assert t[5] == 42.0 and view[0] == 42.0
    sent.close()


def test_a_tensor_over_foreign_memory_moves_without_touching_that_memory() -> None:
    """``torch.from_numpy``: the array still owns the old memory; it must stay intact."""
    arr = np.arange(MB, dtype=np.float64)
    t = torch.from_numpy(arr)
    sent = _transfer.send(t)
    assert in_shared_memory(t) and torch.equal(t, torch.arange(MB, dtype=torch.float64))
    assert np.array_equal(arr, np.arange(MB, dtype=np.float64))  # not given back
    sent.close()


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@MOVES_IN_CHUNKS
def test_many_tensors_keep_one_file_open_not_one_each() -> None:
    """Storages under 64 MiB share one file per send (issue 23, point 6: one descriptor
    per tensor, kept while it lived, exhausted `ulimit -n`)."""
    tensors = [torch.full((MB // 4 + 1,), float(i)) for i in range(200)]  # just over 1 MiB
    before = _open_files()
    sent = _transfer.send(tensors)
    received = _transfer.receive(sent.payload)
    sent.close()
    assert _open_files() - before == 1  # the pack, open while its tensors live
    assert [float(t[0]) for t in received] == [float(i) for i in range(200)]
    assert all(in_shared_memory(t) for t in tensors)
    again = _transfer.send(tensors)  # the same tensors again: nothing copied, nothing opened
    assert again.keep == [] and again.fds == [] and _open_files() - before == 1
    again.close()
    del tensors, received
    assert _open_files() == before


@MOVES_IN_CHUNKS
def test_a_freed_tensor_gives_its_pages_back_while_the_rest_of_its_pack_lives() -> None:
    first, second = torch.ones(2 * MB), torch.ones(2 * MB)  # 8 MB each
    _transfer.send([first, second]).close()
    pack = _packs.region_of(first.untyped_storage()).pack  # type: ignore[union-attr]

    def held() -> int:
        return os.fstat(pack.fd).st_blocks * 512  # type: ignore[union-attr]

    assert held() == 16 * MB
    child = os.fork()
    if child == 0:  # a fork's copy of the tensor owns nothing: dropping it frees nothing
        del first
        os._exit(0)
    os.waitpid(child, 0)
    assert held() == 16 * MB and float(first.sum()) == 2 * MB
    del first
    assert held() == 8 * MB and float(second.sum()) == 2 * MB
