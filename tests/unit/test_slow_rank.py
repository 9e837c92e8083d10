"""The slow-rank rule on hand-made samples, the waiting-or-busy frames, the ranks' own samples."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from icelaunch import _diagnosis, _rundir
from icelaunch._diagnosis import Frame, Look
from icelaunch._diagnosis._sampling import read_sample, sampling_interval, start_sampler
from icelaunch._rundir import Identity
from icelaunch._watching import Detector, RankLook, Sample, where_in
from icelaunch._watching._frames import Where
from icelaunch._watching._slow import DOMINANCE, MIN_SAMPLES, STALL_S

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


def _sample(t: float, busy: int | None, n: int = 4, attempt: int = 0) -> Sample:
    """``busy`` loads a batch while every other rank waits (None: all of them run)."""
    looks = {}
    for rank in range(n):
        if busy is None:
            place = where_in(BACKWARD, "R")
        else:
            place = where_in(LOADING, "R") if rank == busy else where_in(WAITING, "S")
        proc = Look(1000 + rank, "1", "R", 0, 0)
        looks[rank] = RankLook(rank, rank, 1000 + rank, proc, place, True)
    return Sample(t, attempt, looks)


def test_a_rank_that_alone_is_busy_again_and_again_is_named_once() -> None:
    detector = Detector(window_s=30)
    opened = []
    for i in range(60):  # every 0.5 s; rank 2 holds the others back in one sample of 4
        opened += detector.add(_sample(i * 0.5, 2 if i % 4 == 0 else None))
    assert len(opened) == 1
    finding = opened[0]
    assert (finding.rank, finding.function, finding.where) == (2, "load_batch", "data.py:40")
    assert (finding.waited_in, finding.waited_where) == ("all_reduce", "train.py:18")
    assert finding.message().startswith("rank 2 is slowing the job: for ")
    assert "while rank 2 was in load_batch (data.py:40)" in finding.message()
    assert finding.waited_s > 0
    # named as soon as the rule holds: MIN_SAMPLES samples of it, 4 samples apart
    assert finding.to_t >= (MIN_SAMPLES - 1) * 4 * 0.5


def test_ranks_taking_turns_are_never_named() -> None:
    detector = Detector(window_s=30)
    for i in range(600):  # five minutes of the last rank changing every step
        assert detector.add(_sample(i * 0.5, i % 4)) == []
    assert detector.findings == []


def test_one_rank_dominating_less_than_the_rule_is_not_named() -> None:
    detector = Detector(window_s=30)
    others = (0, 2, 3)
    for i in range(600):  # rank 1 in half the samples, the others in turn: 50 % < DOMINANCE
        detector.add(_sample(i * 0.5, 1 if i % 2 == 0 else others[(i // 2) % 3]))
    assert DOMINANCE > 0.5
    assert [f for f in detector.findings if f.kind == "slow_rank"] == []


def test_a_sample_with_a_rank_not_seen_counts_for_nothing() -> None:
    detector = Detector(window_s=30)
    for i in range(100):
        sample = _sample(i * 0.5, 2)
        looks = dict(sample.looks)
        looks[0] = RankLook(0, 0, 1000, looks[0].proc, None, True)  # no stack from rank 0
        assert detector.add(Sample(sample.t, 0, looks)) == []


def test_a_new_attempt_starts_afresh() -> None:
    detector = Detector(window_s=30)
    for i in range(40):
        detector.add(_sample(i * 0.5, 2))
    assert [f.rank for f in detector.findings if f.kind == "slow_rank"] == [2]
    for i in range(40, 80):
        detector.add(_sample(i * 0.5, 3, attempt=1))
    named = [(f.attempt, f.rank) for f in detector.findings if f.kind == "slow_rank"]
    assert named == [(0, 2), (1, 3)]


def test_a_rank_waiting_in_one_place_long_enough_stalled() -> None:
    detector = Detector(window_s=30)
    steps = int(STALL_S / 0.5) + 4
    for i in range(steps):
        detector.add(_sample(i * 0.5, 2))  # the others wait in all_reduce all along
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
        if sample is not None and any(f.function == _own_name() for f in sample.frames):
            break
    assert sample is not None
    functions = [f.function for f in sample.frames]
    assert functions[-1] == _own_name()  # innermost last; time.sleep has no Python frame
    assert sample.state in ("R", "S")
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
