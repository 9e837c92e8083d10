"""Rendezvous: clear errors for failures torch reports obscurely, and a store for each round."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from torch.distributed import DistNetworkError, DistStoreError
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous import api as torch_rdzv

from icelaunch._errors import RendezvousClosedError, RendezvousTimeoutError

# torch's dynamic handler (c10d, etcd-v2) waits ``join_timeout``; static and etcd ``timeout``.
DYNAMIC_BACKENDS = ("c10d", "etcd-v2")
TORCH_JOIN_TIMEOUT_S = 600
UNSHARE_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@contextlib.contextmanager
def store_per_round(params: RendezvousParameters) -> Iterator[None]:
    """Give c10d/etcd-v2 workers a new store each rendezvous round (torch's opt-out switch).

    With the agent's store shared across rounds, torch 2.13 lets a node that joins a
    running job wait forever for MASTER_ADDR, which the old rank 0 never publishes
    again. A store of their own per round (hosted by worker rank 0 on a port chosen
    for that round) also needs no per-restart key prefix, so nodes whose
    ``restart_count`` differ (one restarted, one newly joined) still meet.
    """
    if params.backend not in DYNAMIC_BACKENDS:
        yield
        return
    saved = os.environ.get(UNSHARE_STORE_ENV)
    os.environ[UNSHARE_STORE_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(UNSHARE_STORE_ENV, None)
        else:
            os.environ[UNSHARE_STORE_ENV] = saved


@contextlib.contextmanager
def explained(params: RendezvousParameters) -> Iterator[None]:
    """Re-raise torch's rendezvous timeout and closed errors as ones that say what to do.

    Raises:
        RendezvousTimeoutError: a node did not join in time (torch's error is the cause).
        RendezvousClosedError: the rendezvous of this run id is closed.
    """
    try:
        yield
    except torch_rdzv.RendezvousTimeoutError as exc:
        raise RendezvousTimeoutError(timeout_message(params)) from exc
    except torch_rdzv.RendezvousClosedError as exc:
        raise RendezvousClosedError(closed_message(params)) from exc
    except (DistStoreError, DistNetworkError) as exc:
        if "timed out" not in str(exc).lower():
            raise
        raise RendezvousTimeoutError(f"{timeout_message(params)} (torch: {exc})") from exc


def timeout_key(backend: str) -> str:
    """The ``rdzv_configs`` key that bounds the wait for the other nodes."""
    return "join_timeout" if backend in DYNAMIC_BACKENDS else "timeout"


def _expected(params: RendezvousParameters) -> str:
    if params.min_nodes == params.max_nodes:
        return f"{params.max_nodes} node(s)"
    return f"at least {params.min_nodes} node(s) (nnodes='{params.min_nodes}:{params.max_nodes}')"


def _where(params: RendezvousParameters) -> str:
    backend, endpoint, run_id = params.backend, params.endpoint, params.run_id
    return f"rdzv_backend={backend!r}, endpoint {endpoint!r}, rdzv_id {run_id!r}"


def timeout_message(params: RendezvousParameters) -> str:
    """What timed out, where, and how to fix it."""
    key = timeout_key(params.backend)
    seconds = params.config.get(key, TORCH_JOIN_TIMEOUT_S)
    return (
        f"rendezvous timed out after {seconds} s ({key}) waiting for {_expected(params)} "
        f"to join ({_where(params)}): start every node with the same rdzv_backend, "
        f"rdzv_endpoint, rdzv_id and nnodes (and a distinct node_rank for 'static'), make "
        f"the endpoint reachable from every node, or wait longer with rdzv_configs='{key}=900'"
    )


def closed_message(params: RendezvousParameters) -> str:
    """Why the rendezvous is closed, and how to start a new run."""
    return (
        f"the rendezvous is closed ({_where(params)}): a run with this rdzv_id has already "
        f"finished (or a node of it shut the rendezvous down), and a closed rendezvous cannot "
        f"be joined again. Choose a new rdzv_id for every run, e.g. rdzv_id='{params.run_id}-2' "
        f"or the scheduler's job id"
    )
