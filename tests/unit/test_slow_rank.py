"""The slow-rank rule on hand-made samples, the waiting-or-busy frames, the ranks' own samples."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from icelaunch import _diagnosis, _rundir
from icelaunch._diagnosis import Frame, Look, Tally, Where, where_in
from icelaunch._diagnosis._sampling import Seen, read_sample, sampling_interval, start_sampler
from icelaunch._rundir import Identity
from icelaunch._watching import Detector, Finding, RankLook, Sample
from icelaunch._watching._slow import (
    MIN_GAP,
    MIN_GAP_ANY,
    MIN_LOOKS,
    MORE_WORK,
    SEPARATION,
    STALL_S,
    Window,
)

TORCH = "/venv/lib/python3.11/site-packages/torch"
TRAIN = "/home/me/train.py"
DATA = "/home/me/data.py"

WAITING = (
    Frame(TRAIN, 60, "<module>"),
    Frame(TRAIN, 18, "train"),
    Frame(f"{TORCH}/distributed/c10d_logger.py", 83, "wrapper"),
    Frame(f"{TORCH}/distributed/distributed_c10d.py", 3252, "all_reduce"),
)
LOADING = (
    Frame(TRAIN, 60, "<module>"),
    Frame(TRAIN, 12, "train"),
    Frame(DATA, 40, "load_batch"),
    Frame(f"{TORCH}/functional.py", 10, "tanh"),
)
BACKWARD = (
    Frame(TRAIN, 60, "<module>"),
    Frame(TRAIN, 15, "train"),
    Frame(f"{TORCH}/_tensor.py", 600, "backward"),
    Frame(f"{TORCH}/autograd/__init__.py", 300, "backward"),
    Frame(f"{TORCH}/autograd/graph.py", 800, "_engine_run_backward"),
)


def test_a_rank_in_a_collective_that_does_not_run_waits_there() -> None:
    place = where_in(WAITING, "S")
    assert place is not None and place.waiting
    assert place.label == "all_reduce (train.py:18)"  # the call, past the decorator


def test_the_same_frames_while_running_are_busy() -> None:
    place = where_in(BACKWARD, "R")  # computing its backward
    assert place is not None and not place.waiting
    assert place.label == "train (train.py:15)"
    assert where_in(BACKWARD, "S") == Where(True, "train", "train.py:15", "backward", BACKWARD)


def test_sleeping_in_ones_own_code_or_another_library_is_busy() -> None:
    place = where_in(LOADING, "S")  # waiting for data is the rank's own work
    assert place is not None and not place.waiting
    assert place.label == "load_batch (data.py:40)"


def test_frames_without_user_code_say_nothing() -> None:
    assert where_in((Frame(f"{TORCH}/x.py", 1, "f"),), "S") is None


class _Job:
    """Hand-made samples of ``n`` ranks every 0.5 s: each rank's counts grow by 10 looks,
    of which ``waits[rank]`` waited in all_reduce; the others were busy in ``train``, or
    (for ``extra[rank]`` of them) in ``load_batch``. A busy look costs 5 CPU ticks,
    unless ``ticks[rank]`` says how many the rank used (the same work, done slowly)."""

    def __init__(self, n: int = 4, attempt: int = 0) -> None:
        self.n, self.attempt, self.t = n, attempt, 0.0
        self.seen: list[Counter[Seen]] = [Counter() for _ in range(n)]
        self.looks = [0] * n
        self.cpu = [0] * n

    def sample(
        self,
        waits: list[int],
        extra: dict[int, int] | None = None,
        ticks: dict[int, int] | None = None,
    ) -> Sample:
        self.t += 0.5
        looks = {}
        for rank in range(self.n):
            loading = (extra or {}).get(rank, 0)
            self.seen[rank][(True, "train", "train.py:18", "all_reduce")] += waits[rank]
            self.seen[rank][(False, "load_batch", "data.py:40", None)] += loading
            self.seen[rank][(False, "train", "train.py:15", None)] += 10 - waits[rank] - loading
            self.looks[rank] += 10
            self.cpu[rank] += (ticks or {}).get(rank, 5 * (10 - waits[rank]))
            tally = Tally(self.looks[rank], dict(self.seen[rank]))
            place = where_in(WAITING, "S") if waits[rank] else where_in(BACKWARD, "R")
            proc = Look(1000 + rank, "1", "R", self.cpu[rank], 0)
            looks[rank] = RankLook(rank, rank, 1000 + rank, proc, place, True, tally, self.t)
        return Sample(self.t, self.attempt, looks)


def _slow_findings(detector: Detector) -> list[Finding]:
    return [f for f in detector.findings if f.kind == "slow_rank"]


def test_a_rank_that_waits_far_less_than_all_others_is_named_once() -> None:
    detector, job, opened = Detector(window_s=30), _Job(), []
    for _ in range(120):  # rank 2 loads a batch 2 looks in 10; the others wait for it
        opened += detector.add(job.sample([3, 3, 1, 3], extra={2: 2}))
    assert len(opened) == 1 and _slow_findings(detector) == opened
    finding = opened[0]
    assert (finding.rank, finding.function, finding.where) == (2, "load_batch", "data.py:40")
    assert (finding.waited_in, finding.waited_where) == ("all_reduce", "train.py:18")
    message = finding.message()
    assert message.startswith("rank 2 is slowing the job: for ")
    assert "in all_reduce (train.py:18) while rank 2 was in load_batch (data.py:40)" in message
    # named as soon as a full window holds it (from the first sample on: all ranks waited)
    assert 30 <= finding.to_t - finding.from_t <= 60 and finding.from_t <= 1.0
    assert finding.waited_s == pytest.approx(0.2 * (finding.to_t - finding.from_t), rel=0.1)


def test_ranks_taking_turns_are_never_named() -> None:
    detector, job = Detector(window_s=30), _Job()
    for i in range(600):  # five minutes of the last rank changing every step
        waits = [3, 3, 3, 3]
        waits[i % 4] = 0
        detector.add(job.sample(waits))
    assert _slow_findings(detector) == []


def test_two_slow_ranks_are_not_one_slow_rank() -> None:
    detector, job = Detector(window_s=30), _Job()
    for _ in range(200):
        detector.add(job.sample([4, 1, 1, 4]))
    assert SEPARATION > 0
    assert _slow_findings(detector) == []


def test_a_rank_waiting_less_for_the_same_work_is_unlucky_not_slow() -> None:
    """A CPU hog beside the job slows one rank for a while: it waits less than its peers
    but uses no more CPU than they do. Named only once its gap is large (any cause)."""
    detector, job = Detector(window_s=30), _Job()
    same = {r: 35 for r in range(4)}
    for _ in range(200):  # 10 % of the time less: a clear gap, the same work
        detector.add(job.sample([3, 3, 2, 3], ticks=same))
    assert _slow_findings(detector) == []
    closest = detector.closest
    assert closest is not None and closest.rank == 2 and closest.score < 1
    assert closest.cpu_ratio == pytest.approx(1.0)
    detector, job = Detector(window_s=30), _Job()
    assert MIN_GAP_ANY <= 0.2
    for _ in range(200):  # 20 % less (sleeping while reading data, say): named
        detector.add(job.sample([3, 3, 1, 3], ticks=same))
    assert [f.rank for f in _slow_findings(detector)] == [2]


def test_more_work_names_a_rank_at_a_smaller_gap() -> None:
    detector, job = Detector(window_s=30), _Job(n=8)
    for _ in range(200):  # 10 % less waiting, and more CPU time than the others
        detector.add(job.sample([4, 4, 4, 4, 4, 4, 3, 4], extra={6: 1}))
    (finding,) = _slow_findings(detector)
    assert (finding.rank, finding.function) == (6, "load_batch")
    assert detector.closest is not None and detector.closest.cpu_ratio is not None
    assert detector.closest.cpu_ratio >= MORE_WORK


def test_a_gap_below_the_rule_is_not_named() -> None:
    detector, job = Detector(window_s=30), _Job(n=2)
    assert MIN_GAP > 0.03
    for i in range(400):  # rank 1 waits 3 % of the time less
        detector.add(job.sample([3, 3 if i % 10 < 7 else 2]))
    assert _slow_findings(detector) == []


def test_a_sample_with_a_rank_without_counts_counts_for_nothing() -> None:
    detector, job = Detector(window_s=30), _Job()
    for _ in range(200):
        sample = job.sample([3, 3, 1, 3])
        looks = dict(sample.looks)
        looks[0] = RankLook(0, 0, 1000, looks[0].proc, looks[0].where, True)  # no counts
        assert detector.add(Sample(sample.t, 0, looks)) == []


def test_start_up_is_not_held_against_a_rank() -> None:
    """Rank 3 still imports for 20 s while the others wait at the rendezvous."""
    detector, job = Detector(window_s=30), _Job()
    for _ in range(40):
        detector.add(job.sample([10, 10, 10, 0]))
    for _ in range(200):
        detector.add(job.sample([3, 3, 3, 3]))
    assert _slow_findings(detector) == []


def test_a_rank_that_never_waits_is_judged_after_a_window() -> None:
    detector, job = Detector(window_s=30), _Job()
    for _ in range(200):  # rank 1 never waits at all: its peers always wait for it
        detector.add(job.sample([5, 0, 5, 5]))
    assert [f.rank for f in _slow_findings(detector)] == [1]


def test_a_new_attempt_starts_afresh() -> None:
    detector, job = Detector(window_s=30), _Job()
    for _ in range(100):
        detector.add(job.sample([3, 3, 1, 3]))
    job = _Job(attempt=1)
    for _ in range(100):
        detector.add(job.sample([3, 3, 3, 1]))
    assert [(f.attempt, f.rank) for f in _slow_findings(detector)] == [(0, 2), (1, 3)]


def test_the_window_names_the_least_waiting_rank_and_its_gap() -> None:
    job = _Job(n=3)
    first = job.sample([0, 0, 0])
    for _ in range(MIN_LOOKS // 10):
        last = job.sample([4, 1, 5])
    looks = {
        r: last.looks[r].tally.since(first.looks[r].tally)  # type: ignore[union-attr]
        for r in range(3)
    }
    cpu = {r: 100 for r in range(3)}
    cpu[1] = 150
    window = Window(looks, first.t, last.t, cpu)
    assert window.cpu_ratio(1) == pytest.approx(1.5)
    assert window.share(0) == pytest.approx(0.4)
    named = window.slow()
    assert (
        named is not None and named[0] == 1 and named[1] == pytest.approx(0.45 - 0.1)
    )  # the others' median
    assert window.busy_in(1) == ("train", "train.py:15")
    assert window.waited_in(1) == ("all_reduce", "train.py:18")


def test_a_rank_waiting_in_one_place_long_enough_stalled() -> None:
    detector, job = Detector(window_s=30), _Job()
    for _ in range(int(STALL_S / 0.5) + 4):
        detector.add(job.sample([10, 10, 0, 10]))  # the others wait in all_reduce all along
    stalls = [f for f in detector.findings if f.kind == "stall"]
    assert sorted(f.rank for f in stalls) == [0, 1, 3]
    assert stalls[0].waited_in == "all_reduce"
    assert stalls[0].to_t - stalls[0].from_t >= STALL_S


def test_a_rank_samples_its_own_main_thread_without_signals(tmp_path: Path) -> None:
    run_dir = str(tmp_path)
    with open(_rundir.sampling_path(run_dir), "w") as fh:
        fh.write("0.05\n")
    assert sampling_interval(run_dir) == 0.05
    who = Identity(attempt=0, local_rank=1, rank=3)
    before = threading.active_count()
    start_sampler(run_dir, who, 0.05)
    assert threading.active_count() == before + 1
    deadline = time.monotonic() + 10
    sample = None
    while time.monotonic() < deadline:  # this (main) thread is in this test function
        time.sleep(0.01)
        sample = read_sample(run_dir, 0, 1)
        if sample is None or sample.tally.looks < 10:
            continue
        if any(f.function == _own_name() for f in sample.frames):
            break
    assert sample is not None
    functions = [f.function for f in sample.frames]
    assert functions[-1] == _own_name()  # innermost last; time.sleep has no Python frame
    assert sample.state in ("R", "S")
    tally = sample.tally  # 10 looks a sample, each counted by what it saw
    assert tally.looks >= 10 and sum(tally.seen.values()) == tally.looks
    mine = [k for k in tally.seen if k[1] == _own_name()]
    assert mine and all(not waits for waits, *_ in mine)  # sleeping in its own code: busy
    assert abs(sample.t - time.monotonic()) < 5
    os.remove(_rundir.sampling_path(run_dir))


def _own_name() -> str:
    return "test_a_rank_samples_its_own_main_thread_without_signals"


def test_no_sampling_file_no_sampling(tmp_path: Path) -> None:
    assert sampling_interval(str(tmp_path)) is None
    assert read_sample(str(tmp_path), 0, 0) is None


@pytest.mark.parametrize("text", ["nan", "abc", ""])
def test_a_bad_sampling_file_means_no_sampling(tmp_path: Path, text: str) -> None:
    Path(_rundir.sampling_path(str(tmp_path))).write_text(text)
    assert sampling_interval(str(tmp_path)) is None


def test_the_diagnosis_face_reads_samples() -> None:
    assert _diagnosis.read_sample is read_sample
