"""Device grammar: parse is pure; resolve asks a (faked) device count."""

from __future__ import annotations

import pytest
import torch

from icelaunch import _devices, parse_devices


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has 8 CUDA devices (hardware we do not have)."""
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 8)


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 0)


@pytest.mark.parametrize(
    ("spec", "devices", "backend"),
    [
        ("auto", ["cuda:0"], "nccl"),
        ("cuda", ["cuda:0"], "nccl"),
        ("cuda:0", ["cuda:0"], "nccl"),
        ("cuda:*", [f"cuda:{i}" for i in range(8)], "nccl"),
        ("auto:*", [f"cuda:{i}" for i in range(8)], "nccl"),
        ("cuda:1,3", ["cuda:1", "cuda:3"], "nccl"),
        ("cuda:0-2,7", ["cuda:0", "cuda:1", "cuda:2", "cuda:7"], "nccl"),
        (" cuda:0-1 ", ["cuda:0", "cuda:1"], "nccl"),
        ("cuda:0,0", ["cuda:0", "cuda:0"], "gloo"),
        ("cpu", ["cpu"], "gloo"),
        ("cpu:0-3", ["cpu"] * 4, "gloo"),
    ],
)
def test_grammar_with_gpus(gpus: None, spec: str, devices: list[str], backend: str) -> None:
    got, got_backend = parse_devices(spec)
    assert got == [torch.device(d) for d in devices]
    assert got_backend == backend


@pytest.mark.parametrize(
    ("spec", "count"),
    [("auto", 1), ("cpu", 1), ("cpu:0-3", 4), ("cpu:5", 1), ("cpu:0,2,4", 3)],
)
def test_grammar_without_gpus(no_gpus: None, spec: str, count: int) -> None:
    assert parse_devices(spec) == ([torch.device("cpu")] * count, "gloo")


def test_star_on_cpu_is_one_worker_per_core(no_gpus: None) -> None:
    devices, _ = parse_devices("cpu:*")
    assert len(devices) == _devices.cpu_count()
    assert parse_devices("auto:*")[0] == devices


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", r"invalid devices 'gpu': the device type must be one of auto, cpu, cuda"),
        ("cuda:", r"invalid devices 'cuda:': a ':' must be followed by"),
        ("cuda:a", r"invalid devices 'cuda:a': 'a' is not an index"),
        ("cuda:2-0", r"invalid devices 'cuda:2-0': a range must go upwards"),
        ("cuda:-1", r"invalid devices 'cuda:-1'"),
        ("cuda:0,,1", r"invalid devices 'cuda:0,,1': '' is not an index"),
        ("cuda:0-", r"invalid devices 'cuda:0-'"),
        ("cuda:*,1", r"invalid devices 'cuda:\*,1'"),
        ("cpu:0:1", r"invalid devices 'cpu:0:1'"),
        ("", r"invalid devices ''"),
        ("CUDA", r"invalid devices 'CUDA'"),
        ("cuda:8", r"device index 8 is past the 8 visible CUDA device\(s\) \(valid indices 0-7\)"),
        ("cuda:0-9", r"device index 8 is past"),
    ],
)
def test_bad_specs_quote_input_and_show_valid_forms(gpus: None, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_devices(spec)
    assert "valid forms: 'auto', 'cpu', 'cuda'" in str(info.value)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:*", "cuda:0-2,7"])
def test_cuda_without_cuda_is_a_clear_error(no_gpus: None, spec: str) -> None:
    with pytest.raises(ValueError, match=r"CUDA is not available on this machine; use 'cpu'"):
        parse_devices(spec)


@pytest.mark.parametrize("spec", [None, 3, ["cuda:0"], b"cpu"])
def test_non_string_spec_is_a_type_error(spec: object) -> None:
    with pytest.raises(TypeError, match="devices must be a string"):
        parse_devices(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "backend", "expected"),
    [("cuda:0,1", "gloo", "gloo"), ("cpu:0-1", "gloo", "gloo"), ("cuda:0,1", "nccl", "nccl")],
)
def test_explicit_backend(gpus: None, spec: str, backend: str, expected: str) -> None:
    assert parse_devices(spec, backend)[1] == expected


@pytest.mark.parametrize(
    ("spec", "backend", "message"),
    [
        ("cpu:0-1", "nccl", r"invalid dist_backend 'nccl' for devices 'cpu:0-1': nccl needs CUDA"),
        ("cuda:0,0", "nccl", r"nccl cannot run two workers on one GPU"),
        ("cuda:0", "NCCL", r"invalid dist_backend 'NCCL': must be one of auto, nccl, gloo, mpi"),
        ("cuda:0", "tcp", r"invalid dist_backend 'tcp'"),
    ],
)
def test_bad_backend(gpus: None, spec: str, backend: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_devices(spec, backend)


def test_mpi_needs_an_mpi_build(gpus: None) -> None:
    if torch.distributed.is_mpi_available():
        assert parse_devices("cpu", "mpi")[1] == "mpi"
    else:
        with pytest.raises(ValueError, match="this torch build has no MPI support"):
            parse_devices("cpu", "mpi")


def test_parse_is_pure() -> None:
    assert _devices.parse_device_spec("cuda:0-2,7") == _devices.DeviceRequest(
        "cuda", (0, 1, 2, 7), False
    )
    assert _devices.parse_device_spec("auto:*") == _devices.DeviceRequest("auto", None, True)
