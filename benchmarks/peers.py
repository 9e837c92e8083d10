"""One measured run of one launcher: ``python benchmarks/peers.py PEER NPROC [warm]``.

Every peer runs the same job in each worker: join a gloo process group, one
all_reduce, leave. The last line printed is JSON: ``call_s`` (launch call to its
return), ``return_lag_s`` (from the last worker finishing its job to the call
returning), ``rss_mb`` (peak RSS of this, the launching process); for icelaunch
also ``second_s`` (a second launch in the same process, with BENCH_SECOND=1)
and ``teardown_s`` (one rank raising to the call raising, with BENCH_FAIL=1).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1] == "icelaunch-fastest":
    import icelaunch

    icelaunch.warm_up()  # before torch: the fork server imports it alongside us

import json
import os
import resource
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist


def job(rank: int = -1, world: int = -1, port: int = 0) -> float:
    """The benchmark job; returns when it finished (time.time())."""
    if not dist.is_initialized():
        if rank >= 0:  # torch.multiprocessing.spawn gives only the rank
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        dist.init_process_group("gloo")
        own_group = True
    else:
        own_group = False  # icelaunch set it up and tears it down
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == dist.get_world_size()
    if own_group:
        dist.destroy_process_group()
    finished = time.time()
    out = os.environ.get("BENCH_FINISH_FILE")
    if out:
        with open(out, "a") as fh:
            fh.write(f"{finished}\n")
    return finished


def icelaunch_job(launcher: Any) -> float:
    return job()


def run_icelaunch(n: int, **kwargs: Any) -> dict[str, float]:
    from icelaunch import ElasticLauncher

    launcher = ElasticLauncher(f"cpu:0-{n - 1}", **kwargs).freeze()
    start = time.time()
    finished = launcher(icelaunch_job, launcher)
    result = _timing(start, max(finished.values()))
    if os.environ.get("BENCH_SECOND") == "1":
        start = time.time()
        launcher(icelaunch_job, launcher)
        result["second_s"] = time.time() - start
    if os.environ.get("BENCH_FAIL") == "1":
        result["teardown_s"] = _failure_teardown(launcher)
    return result


def _timing(start: float, finished: float) -> dict[str, float]:
    now = time.time()
    return {"call_s": now - start, "return_lag_s": now - finished}


def failing_job(launcher: Any, stamp: str) -> None:
    dist.barrier()
    if launcher.rank == 1:
        with open(stamp, "w") as fh:
            fh.write(str(time.time()))
        raise RuntimeError("deliberate")
    dist.all_reduce(torch.ones(1))  # the peers block: rank 1 never joins
    time.sleep(60)


def _failure_teardown(launcher: Any) -> float:
    """Seconds from one rank raising to the launch call raising."""
    from icelaunch import WorkerFailedError

    fd, stamp = tempfile.mkstemp()
    os.close(fd)
    try:
        launcher(failing_job, launcher, stamp)
    except WorkerFailedError:
        raised = time.time()
    with open(stamp) as fh:
        failed = float(fh.read())
    os.remove(stamp)
    return raised - failed


def run_elastic_launch(n: int) -> dict[str, float]:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        run_id="bench",
        max_restarts=0,
        start_method="spawn",
    )
    start = time.time()
    finished = elastic_launch(config, job)()
    return _timing(start, max(finished.values()))


def _timed_by_file(launch: Any) -> dict[str, float]:
    """Time ``launch()``, whose workers append their finish times to a file."""
    fd, path = tempfile.mkstemp()
    os.close(fd)
    os.environ["BENCH_FINISH_FILE"] = path
    try:
        start = time.time()
        launch()
        returned = time.time()
        with open(path) as fh:
            finished = max(float(x) for x in fh.read().split())
    finally:
        os.remove(path)
    return {"call_s": returned - start, "return_lag_s": returned - finished}


def run_mp_spawn(n: int) -> dict[str, float]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return _timed_by_file(lambda: mp.spawn(job, args=(n, port), nprocs=n, join=True))


def run_torchrun(n: int) -> dict[str, float]:
    from torch.distributed.run import main as torchrun

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchrun_job.py")
    return _timed_by_file(lambda: torchrun(["--standalone", f"--nproc-per-node={n}", script]))


PEERS = {
    "icelaunch": lambda n: run_icelaunch(n),
    "icelaunch-fastest": lambda n: run_icelaunch(n),
    "icelaunch-cold": lambda n: run_icelaunch(n, warm_start=False),
    "torchrun": run_torchrun,
    "elastic_launch": run_elastic_launch,
    "mp.spawn": run_mp_spawn,
}


def main() -> None:
    peer, n = sys.argv[1], int(sys.argv[2])
    result = PEERS[peer](n)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()
