"""Code written for torchrun runs unchanged: its environment, its process group, fork's inheritance.

Real launches: real worker processes, real gloo collectives, nothing left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from helpers import STRAY, all_reduce_sum
from icelaunch import ElasticLauncher, WorkerFailedError

pytestmark = pytest.mark.timeout(120)

FAST = {"monitor_interval": 0.5}


# --- 1. stray variables --------------------------------------------------------------------


def test_stray_variables_do_not_change_a_function_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in STRAY.items():
        monkeypatch.setenv(name, value)
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert launcher(all_reduce_sum, launcher) == {0: 3.0, 1: 3.0}


# --- 2. process_group=False ----------------------------------------------------------------


def own_group(launcher: ElasticLauncher, fail_once: str | None = None) -> dict[str, Any]:
    """Initialise torch.distributed as a torchrun script does (env://), all_reduce."""
    assert not dist.is_initialized()  # the launcher left it to us
    dist.init_process_group("gloo")
    if fail_once and launcher.rank == 1 and not os.path.exists(fail_once):
        Path(fail_once).touch()
        raise RuntimeError("first attempt fails")
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    return {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "sum": t.item(),
        "env": (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]),
        "restart": launcher.restart_count,
    }


@pytest.mark.parametrize("standalone", [False, True], ids=["static", "standalone"])
def test_process_group_false_leaves_the_group_to_the_function(standalone: bool) -> None:
    launcher = ElasticLauncher(
        "cpu:0-1", standalone=standalone, process_group=False, **FAST
    ).freeze()
    results = launcher(own_group, launcher)
    for rank, value in results.items():
        assert (value["rank"], value["world"], value["sum"]) == (rank, 2, 3.0)
        assert value["env"] == (str(rank), "2", str(rank))


def test_process_group_false_restarts(tmp_path: Path) -> None:
    launcher = ElasticLauncher("cpu:0-1", max_restarts=1, process_group=False, **FAST).freeze()
    results = launcher(own_group, launcher, str(tmp_path / "failed-once"))
    assert [v["sum"] for v in results.values()] == [3.0, 3.0]
    assert [v["restart"] for v in results.values()] == [1, 1]


# --- 3. fork inherits ----------------------------------------------------------------------


def inheriting(
    launcher: ElasticLauncher,
    queue: Any,
    lock: Any,
    conn: Any,
    log: Any,
    big: torch.Tensor,
    fn: Any,
) -> Any:
    with lock:
        log.write(f"rank {launcher.rank}\n")
        log.flush()
    queue.put((launcher.rank, fn(launcher.rank), float(big.sum())))
    if launcher.rank == 0:
        conn.send("from rank 0")
    dist.barrier()  # no rank leaves while a peer still connects
    return {"rank": launcher.rank, "tensor": torch.full((2,), launcher.rank)}


def test_fork_inherits_function_and_arguments(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue, lock = ctx.Queue(), ctx.Lock()
    receiver, sender = ctx.Pipe(duplex=False)
    big = torch.ones(1 << 20)
    log_path = tmp_path / "log.txt"
    with log_path.open("w") as log:
        launcher = ElasticLauncher("cpu:0-1", start_method="fork", **FAST).freeze()
        results = launcher(inheriting, launcher, queue, lock, sender, log, big, lambda r: r * 7)
    got = sorted(queue.get(timeout=30) for _ in range(2))
    assert got == [(0, 0, float(1 << 20)), (1, 7, float(1 << 20))]
    assert receiver.recv() == "from rank 0"
    assert sorted(log_path.read_text().splitlines()) == ["rank 0", "rank 1"]
    assert torch.equal(results[1]["tensor"], torch.full((2,), 1))  # returned pickled
    for conn in (receiver, sender):
        conn.close()
    queue.close()
    queue.join_thread()


def put_rank(launcher: ElasticLauncher, queue: Any) -> None:
    queue.put(launcher.rank)


@pytest.mark.parametrize(
    ("make", "sign"),
    [
        (lambda: multiprocessing.get_context("fork").Queue(), "through inheritance"),
        (threading.Lock, "_thread.lock"),
    ],
    ids=["queue", "thread-lock"],
)
def test_spawn_cannot_send_what_only_fork_inherits_and_says_so(make: Any, sign: str) -> None:
    thing = make()
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    with pytest.raises(TypeError) as info:
        launcher(put_rank, launcher, thing)
    message = str(info.value)
    assert sign in message and "start_method='fork'" in message
    assert "shadow torch modules" not in message


# --- 5. run id -----------------------------------------------------------------------------


def run_id(launcher: ElasticLauncher) -> tuple[str, str]:
    dist.barrier()  # no rank leaves while a peer still connects
    return os.environ["TORCHELASTIC_RUN_ID"], launcher.rdzv_id


def test_each_single_node_launch_has_a_fresh_run_id() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    assert launcher.spec.rdzv_id == "none"
    first, second = launcher(run_id, launcher), launcher(run_id, launcher)
    ids = {first[0], first[1], second[0], second[1]}
    assert len(ids) == 2 and "none" not in {i for pair in ids for i in pair}
    assert first[0][0] == first[0][1] == first[1][0]  # one id for every rank
    named = ElasticLauncher("cpu:0-1", rdzv_id="exp-3", **FAST).freeze()
    assert named(run_id, named) == {0: ("exp-3", "exp-3"), 1: ("exp-3", "exp-3")}


# --- 6. hints that fit their case ----------------------------------------------------------

MAIN_GUARD = '__name__ == "__main__"'


def silent_exit(launcher: ElasticLauncher) -> None:
    if launcher.rank == 0:
        os._exit(3)


def terminated(launcher: ElasticLauncher) -> None:
    if launcher.rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler or `kill` would
    threading.Event().wait(100)  # stopped by the launcher


@pytest.mark.parametrize(("start_method", "hinted"), [("spawn", True), ("fork", False)])
def test_main_guard_hint_only_where_workers_import_main(start_method: str, hinted: bool) -> None:
    launcher = ElasticLauncher("cpu:0-1", start_method=start_method, **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(silent_exit, launcher)
    assert (MAIN_GUARD in str(info.value)) is hinted


def test_a_rank_stopped_with_sigterm_is_not_given_the_main_guard_hint() -> None:
    launcher = ElasticLauncher("cpu:0-1", **FAST).freeze()
    with pytest.raises(WorkerFailedError) as info:
        launcher(terminated, launcher)
    assert info.value.first.rank == 1 and info.value.first.signal_name == "SIGTERM"
    report = str(info.value)
    assert "stopped with SIGTERM" in report and MAIN_GUARD not in report


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
