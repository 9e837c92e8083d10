"""Train a small MLP with DistributedDataParallel, launched from Python by icelaunch.

Every worker builds the same synthetic data set from a seed (Gaussian blobs),
trains on its own shard with ``DistributedSampler``, and averages gradients
through DDP. Rank 0 prints the loss (averaged over all ranks) and the global
throughput after each epoch; every worker returns the held-out accuracy.

Run it::

    python examples/train_mlp.py                      # cuda:* if available, else cpu:0-3
    python examples/train_mlp.py --devices cpu:0-1 --epochs 3 --samples 8192
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from icelaunch import ElasticLauncher


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters and data-set shape, the same on every rank."""

    epochs: int = 5
    samples: int = 12_288
    test_samples: int = 2_048
    features: int = 8
    # Not `classes`: cloudpickle, which ships this file's functions to the workers,
    # would take `config.classes` for the `torch.classes` pseudo-module and fail.
    num_classes: int = 4
    hidden: int = 64
    batch_size: int = 128
    lr: float = 0.1
    seed: int = 0


def make_blobs(config: TrainConfig, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled points around fixed class centres (the centres depend on ``config.seed``)."""
    centres = torch.randn(
        config.num_classes, config.features, generator=torch.Generator().manual_seed(config.seed)
    )
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(config.num_classes, (n,), generator=gen)
    points = centres[labels] * 1.5 + torch.randn(n, config.features, generator=gen)
    return points, labels


def make_model(config: TrainConfig) -> nn.Module:
    """A two-layer perceptron."""
    return nn.Sequential(
        nn.Linear(config.features, config.hidden),
        nn.ReLU(),
        nn.Linear(config.hidden, config.num_classes),
    )


def _global_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` element-wise over all ranks."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _global_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> tuple[float, int]:
    """One pass over this rank's shard; returns (summed loss, sample count)."""
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, count = 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()  # DDP averages the gradients across ranks here
        optimizer.step()
        loss_sum += loss.item() * len(y)
        count += len(y)
    return loss_sum, count


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Held-out accuracy over all ranks, each scoring a strided slice of the test set."""
    rank, world = dist.get_rank(), dist.get_world_size()
    xs, ys = x[rank::world].to(device), y[rank::world].to(device)
    correct = (model(xs).argmax(dim=1) == ys).sum().item()
    total_correct, total = _global_sum([float(correct), float(len(ys))], device)
    return total_correct / total


def train(launcher: ElasticLauncher, config: TrainConfig) -> dict[str, float]:
    """The worker: train on this rank's shard; return final loss, accuracy and samples/s."""
    device = launcher.assigned_device
    x, y = make_blobs(config, config.samples, seed=config.seed + 1)
    x_test, y_test = make_blobs(config, config.test_samples, seed=config.seed + 2)
    dataset = TensorDataset(x, y)
    # This rank's shard; set_epoch() below reshuffles it identically on every rank.
    sampler: DistributedSampler[int] = DistributedSampler(dataset, seed=config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler)

    torch.manual_seed(config.seed)
    module = make_model(config).to(device)
    model = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)

    loss, samples_per_s = float("nan"), 0.0
    for epoch in range(config.epochs):
        sampler.set_epoch(epoch)
        model.train()
        start = time.perf_counter()
        loss_sum, count = _train_epoch(model, loader, optimizer, device)
        elapsed = _global_max(time.perf_counter() - start, device)
        total_loss, total_count = _global_sum([loss_sum, float(count)], device)
        loss, samples_per_s = total_loss / total_count, total_count / elapsed
        if launcher.rank == 0:
            print(
                f"epoch {epoch + 1}/{config.epochs}  loss {loss:.4f}  "
                f"{samples_per_s:,.0f} samples/s ({launcher.world_size} ranks)"
            )
    model.eval()
    accuracy = _accuracy(model, x_test, y_test, device)
    return {"loss": loss, "accuracy": accuracy, "samples_per_s": samples_per_s}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer, e.g. 3")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--devices`` defaults to every GPU, else four CPU workers."""
    default_devices = "cuda:*" if torch.cuda.is_available() else "cpu:0-3"
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Train an MLP with DDP, launched by icelaunch.")
    parser.add_argument("--devices", default=default_devices, help="icelaunch device spec")
    parser.add_argument("--epochs", type=_positive_int, default=defaults.epochs)
    parser.add_argument(
        "--samples", type=_positive_int, default=defaults.samples, help="training samples"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Launch the training; print and return a summary of all ranks' results."""
    args = parse_args(argv)
    config = TrainConfig(epochs=args.epochs, samples=args.samples, seed=args.seed)
    start = time.perf_counter()
    launcher = ElasticLauncher(args.devices).freeze()
    results: dict[int, dict[str, float]] = launcher(train, launcher, config)
    summary: dict[str, Any] = {
        "workers": len(results),
        "devices": args.devices,
        **results[min(results)],  # every rank returns the same all-reduced numbers
        "chance": 1 / config.num_classes,
        "wall_s": time.perf_counter() - start,
    }
    print(
        f"done: {summary['workers']} workers on {args.devices}, "
        f"final loss {summary['loss']:.4f}, held-out accuracy {summary['accuracy']:.1%} "
        f"(chance {summary['chance']:.0%}), {summary['samples_per_s']:,.0f} samples/s, "
        f"{summary['wall_s']:.1f} s"
    )
    return summary


if __name__ == "__main__":
    main()
