"""Arguments and results through shared memory: integrity, write semantics, cleanup.

The unit part runs ``send``/``receive`` without launching; the launch part
checks every kind end to end (checksums computed on both sides), the write
semantics, the CUDA refusal (with a faked device) and that nothing is left in
``/dev/shm`` after success, failure, Ctrl-C and ``kill -9``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from packaging.version import Version

from icelaunch import ElasticLauncher, WorkerFailedError, _transfer
from icelaunch._transfer import _shared_move
from tests_helpers import assert_gone

pytestmark = pytest.mark.timeout(180)
# torch 2.13 (constraints.txt) has UntypedStorage._swap_data_ptr_; older torch (2.11 on
# the GPU machines) moves with share_memory_() instead, which holds the bytes twice
MOVES_IN_CHUNKS = pytest.mark.skipif(
    Version(torch.__version__).release < (2, 13),
    reason="torch before 2.13 moves with share_memory_() (no _swap_data_ptr_)",
)
FAST = {"monitor_interval": 0.5}
MB = 1 << 20


@dataclasses.dataclass
class Record:
    """A user dataclass carrying a tensor and an array."""

    weights: torch.Tensor
    table: np.ndarray
    label: str


def make_kinds(seed: int) -> dict[str, Any]:
    """One object of every supported kind, each at least 1 MiB unless said small."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = torch.randn(800, 1000, generator=gen)
    module = torch.nn.Sequential(torch.nn.Linear(600, 600), torch.nn.BatchNorm1d(300_000))
    module[1].running_mean.normal_(generator=gen)
    grid = rng.standard_normal((700, 400))
    return {
        "float32": torch.randn(600_000, generator=gen),
        "bfloat16_2d": torch.randn(800, 900, generator=gen).bfloat16(),
        "int64_transposed": torch.randint(0, 1 << 40, (500, 600), generator=gen).t(),
        "bool": torch.rand(3_000_000, generator=gen) > 0.5,
        "requires_grad": torch.randn(400_000, generator=gen).requires_grad_(),
        "views": (base, base[7:], base[:, ::3]),
        "nested": [{"deep": [torch.randn(300_000, generator=gen)]}],
        "dataclass": Record(torch.randn(300_000, generator=gen), rng.random(200_000), "r"),
        "module": module,
        "numpy_c": rng.standard_normal(300_000),
        "numpy_fortran": np.asfortranarray(grid),
        "numpy_strided": grid[:, ::2],
        "bytes": rng.bytes(3 * MB),
        "bytearray": bytearray(rng.bytes(2 * MB)),
        "memoryview": memoryview(np.ascontiguousarray(grid[:400])),
        "small": (torch.ones(3), np.arange(4), b"tiny", [1, 2.5, "x"]),
    }


def digest(obj: Any) -> str:
    """A checksum of the content, types, shapes and dtypes of ``obj``."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    h.update(type(obj).__qualname__.encode())
    if isinstance(obj, torch.nn.Module):
        _feed(h, dict(obj.state_dict()))
    elif isinstance(obj, torch.Tensor):
        flat = obj.detach().contiguous().reshape(-1).view(torch.uint8)
        h.update(f"{obj.dtype}{tuple(obj.shape)}{obj.requires_grad}".encode())
        h.update(flat.numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode() + obj.tobytes())
    elif isinstance(obj, memoryview):
        h.update(f"{obj.format}{obj.shape}".encode() + obj.tobytes())
    elif isinstance(obj, bytes | bytearray):
        h.update(bytes(obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _feed(h, value)
    elif dataclasses.is_dataclass(obj):
        _feed(h, dataclasses.astuple(obj))
    else:
        h.update(repr(obj).encode())


KIND_NAMES = list(make_kinds(0))


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
    assert t.is_shared()  # the caller's own storage moved, as with torch.multiprocessing
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


def test_receive_in_another_process_while_the_sender_lives(tmp_path: Path) -> None:
    t = torch.arange(MB, dtype=torch.float64)
    sent = _transfer.send({"t": t, "a": np.arange(MB)})
    (tmp_path / "payload").write_bytes(sent.payload)
    code = (
        "import sys, pickle; from icelaunch import _transfer; "
        f"d = _transfer.receive(open({str(tmp_path / 'payload')!r}, 'rb').read()); "
        "d['t'][0] = -1.0; print(float(d['t'].sum()), int(d['a'].sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(float(t.sum())), str(int(np.arange(MB).sum()))]
    assert t[0] == -1.0  # the other process wrote into the caller's tensor
    sent.close()


def test_close_frees_the_files() -> None:
    sent = _transfer.send((np.ones(MB), b"x" * MB))
    fds = list(sent.fds)
    assert fds and all(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:") for fd in fds)
    sent.close()
    assert not sent.fds
    with pytest.raises(RuntimeError, match="must be alive"):
        _transfer.receive(sent.payload)


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (no GPU on the test machine)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda:0")


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

    def failing_map(fd: int, size: int) -> Any:
        raise RuntimeError("unable to mmap: Cannot allocate memory")

    monkeypatch.setattr(_shared_move, "CHUNK_BYTES", 2 * MB)
    if where == "write":
        monkeypatch.setattr(_shared_move.os, "pwrite", failing_pwrite)
    else:
        monkeypatch.setattr(torch.UntypedStorage, "_new_shared_fd_cpu", failing_map)
    with pytest.raises((OSError, RuntimeError), match=r"No space left|unable to mmap"):
        _transfer.send(t)
    assert len(calls) == (3 if where == "write" else 0)
    assert not t.is_shared() and torch.equal(t, expected)


def test_a_moved_tensor_keeps_its_values_views_and_writes() -> None:
    t = torch.randn(2 * MB)
    expected, view = t.clone(), t[5:]
    sent = _transfer.send({"t": t})
    assert t.is_shared() and torch.equal(t, expected) and torch.equal(view, expected[5:])
    got = _transfer.receive(sent.payload)["t"]
    got[5] = 42.0
    assert t[5] == 42.0 and view[0] == 42.0
    sent.close()


def test_a_tensor_over_foreign_memory_moves_without_touching_that_memory() -> None:
    """``torch.from_numpy``: the array still owns the old memory; it must stay intact."""
    arr = np.arange(MB, dtype=np.float64)
    t = torch.from_numpy(arr)
    sent = _transfer.send(t)
    assert t.is_shared() and torch.equal(t, torch.arange(MB, dtype=torch.float64))
    assert np.array_equal(arr, np.arange(MB, dtype=np.float64))  # not given back
    sent.close()


# ---------------------------------------------------------------- real launches


def digest_args(launcher: ElasticLauncher, kinds: dict[str, Any]) -> dict[str, str]:
    return {name: digest(obj) for name, obj in kinds.items()}


def return_kinds(launcher: ElasticLauncher, seed: int) -> dict[str, Any]:
    kinds = make_kinds(seed + launcher.rank)
    kinds["digest"] = {name: digest(obj) for name, obj in kinds.items()}
    return kinds


def test_arguments_of_every_kind_reach_every_worker_intact() -> None:
    kinds = make_kinds(2)
    expected = {name: digest(obj) for name, obj in kinds.items()}
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(digest_args, launcher, kinds)
    assert results == {0: expected, 1: expected}


def test_results_of_every_kind_come_back_intact() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(return_kinds, launcher, 3)
    for rank, kinds in results.items():
        sent_digests = kinds.pop("digest")
        assert {name: digest(obj) for name, obj in kinds.items()} == sent_digests, rank
        assert kinds["float32"].untyped_storage().nbytes() == 4 * 600_000


def write_then_read(
    launcher: ElasticLauncher, t: torch.Tensor, arr: np.ndarray
) -> tuple[float, float]:
    if launcher.rank == 0:
        t[0] = 42.0
        arr[0] = 42.0
    dist.barrier()
    return float(t[0]), float(arr[0])


def test_write_semantics_tensors_shared_arrays_copy_on_write() -> None:
    t, arr = torch.zeros(MB), np.zeros(MB)
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    results = launcher(write_then_read, launcher, t, arr)
    assert results == {0: (42.0, 42.0), 1: (42.0, 0.0)}
    assert t[0] == 42.0 and arr[0] == 0.0


def test_cuda_argument_is_refused_before_any_worker_starts() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    fake = torch.ones(4).as_subclass(FakeCudaTensor)
    with pytest.raises(_transfer.UnsupportedTransferError, match="CUDA tensor of shape"):
        launcher(digest_args, launcher, {"x": fake})


def _ours_in_dev_shm(pids: set[int]) -> list[str]:
    """Entries of /dev/shm that processes ``pids`` (or icelaunch) created."""
    return [
        name
        for name in os.listdir("/dev/shm")
        if name.startswith("icelaunch") or any(f"_{pid}_" in name for pid in pids)
    ]


def pid_of(launcher: ElasticLauncher, t: torch.Tensor) -> int:
    return os.getpid()


def fail_on_rank_1(launcher: ElasticLauncher, t: torch.Tensor) -> torch.Tensor:
    if launcher.rank == 1:
        raise ValueError("deliberate")
    return t * 2


def test_nothing_left_in_dev_shm_after_success_and_failure() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    t = torch.ones(2 * MB)
    pids = {os.getpid(), *launcher(pid_of, launcher, t).values()}
    with pytest.raises(WorkerFailedError, match="deliberate"):
        launcher(fail_on_rank_1, launcher, t)
    assert _ours_in_dev_shm(pids) == []
    assert _memfds_of(os.getpid()) == []


def _memfds_of(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "icelaunch-transfer" in target:
            found.append(target)
    return found


DRIVER = """
import os, sys, time
from pathlib import Path
import numpy as np, torch
from icelaunch import ElasticLauncher

def worker(launcher, t, arr, pid_dir):
    Path(pid_dir, str(os.getpid())).write_text("")
    time.sleep(600)

if __name__ == "__main__":
    launcher = ElasticLauncher("cpu:0-1", monitor_interval=0.5).freeze()
    Path(sys.argv[1], str(os.getpid())).write_text("")
    try:
        launcher(worker, launcher, torch.ones(1 << 22), np.ones(1 << 20), sys.argv[1])
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(130)
"""


def _start_driver(
    tmp_path: Path, new_session: bool = False
) -> tuple[subprocess.Popen[str], set[int]]:
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(pid_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )
    deadline = time.monotonic() + 120
    while len(list(pid_dir.iterdir())) < 3:  # the driver and its two workers
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.05)
    return proc, {int(p.name) for p in pid_dir.iterdir()}


def test_nothing_left_after_ctrl_c(tmp_path: Path) -> None:
    proc, pids = _start_driver(tmp_path)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "KeyboardInterrupt" in out, out
    assert_gone(pids, 30)
    assert _ours_in_dev_shm(pids) == []


def test_nothing_left_after_kill_9_and_the_next_launch_works(tmp_path: Path) -> None:
    proc, pids = _start_driver(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert_gone(pids, 30)
    assert _ours_in_dev_shm(pids) == []  # nothing named: nothing for a next launch to clean
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert set(launcher(pid_of, launcher, torch.ones(2 * MB))) == {0, 1}


def _semaphores() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("sem.mp-")}


def test_no_semaphore_left_when_the_whole_launcher_tree_is_killed(tmp_path: Path) -> None:
    """kill -9 of the launcher with its resource tracker and fork server (a node lost):
    multiprocessing's named semaphores of torch's queues are unlinked once the
    workers run, so none remains in /dev/shm."""
    before = _semaphores()
    proc, pids = _start_driver(tmp_path, new_session=True)
    time.sleep(0.5)  # the workers have reported that they run (they wrote their pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver's group: driver, tracker, fork server
    proc.communicate(timeout=60)
    assert_gone(pids, 30)
    assert _semaphores() - before == set()
