"""Process groups, devices and cross-process reductions in one place.

A run launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
joins a process group (NCCL on CUDA, Gloo on CPU); a plain ``python`` run is one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """The device to run on: ``requested`` if given, else ``cuda:<local_rank>`` when
    available, else CPU. A CUDA request on a machine without CUDA is a :class:`ConfigError`."""
    if requested is None or requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"--device {requested!r}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the ``torchrun`` process group if the environment names one; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(values: list[float] | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """Sum a vector of numbers over all processes (float64); returns it on CPU."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if is_dist():
        if dist.get_backend() == "nccl":
            t = t.to(device or torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()


def weighted_mean(metrics: dict[str, float], weight: float, device: torch.device | None = None) -> dict[str, float]:
    """Average flat numeric ``metrics`` over processes, weighting each by its ``weight``
    (e.g. its number of images). Every process must pass the same keys."""
    keys = sorted(metrics)
    vec = [float(metrics[k]) * weight for k in keys] + [float(weight)]
    tot = all_reduce_sum(vec, device)
    n = float(tot[-1])
    return {k: (float(tot[i]) / n if n > 0 else 0.0) for i, k in enumerate(keys)}


def cleanup() -> None:
    """Leave the process group (no-op in a single-process run)."""
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()
