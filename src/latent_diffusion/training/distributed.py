"""Data-parallel training over ``torchrun``: one process per device, gradients averaged by DDP.

:class:`DistributedContext` reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). Without those variables it describes a single
process, and every method degrades to the obvious no-op, so one training loop serves both.

:class:`ShardedSampler` orders a dataset exactly like ``torch.utils.data.DistributedSampler``
(same seed-per-epoch permutation, same padding, same striding), but can also start part-way
through an epoch, so a resumed run sees the very samples it would have seen without the stop.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from latent_diffusion.validation import check_in_range, check_positive


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class ShardedSampler(Sampler[int]):
    """This rank's share of a seeded per-epoch permutation, optionally starting mid-epoch.

    Ranks take every ``num_replicas``-th index of the epoch's order, so shards are disjoint.
    Without ``drop_last`` the order is padded by repeating its start so every rank gets the
    same count (as in ``DistributedSampler``); with it the tail is dropped.
    """

    def __init__(self, dataset: Sized, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        check_positive("num_replicas", num_replicas)
        check_in_range("rank", rank, 0, num_replicas - 1)
        self.length = len(dataset)
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        if drop_last:
            self.num_samples = self.length // num_replicas
        else:
            self.num_samples = math.ceil(self.length / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; skip the first ``start`` samples of this rank's shard."""
        check_positive("epoch", epoch, allow_zero=True)
        check_in_range("start", start, 0, self.num_samples)
        self.epoch, self.start = epoch, start

    def epoch_indices(self) -> list[int]:
        """This rank's full shard for the current epoch (ignoring ``start``)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.drop_last:
            order = order[: self.total_size]
        elif self.total_size > len(order) and order:
            padding = self.total_size - len(order)
            order += (order * math.ceil(padding / len(order)))[:padding]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class DistributedContext:
    """Rank, world size and device of this process, with the collective operations training needs.

    Use ``ctx = DistributedContext().init()`` at start-up and ``ctx.cleanup()`` at exit (or
    ``with DistributedContext() as ctx:``). The backend is ``nccl`` on CUDA and ``gloo`` on CPU.
    """

    def __init__(self, device: str | torch.device | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.world_size = _env_int(env, "WORLD_SIZE", 1)
        self.rank = _env_int(env, "RANK", 0)
        self.local_rank = _env_int(env, "LOCAL_RANK", 0)
        check_positive("WORLD_SIZE", self.world_size)
        check_in_range("RANK", self.rank, 0, self.world_size - 1)
        if self.world_size > 1:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if not env.get(name):
                    raise ValueError(f"{name} is not set but WORLD_SIZE={self.world_size}; launch with torchrun")
        if device is None:
            device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0

    @property
    def backend(self) -> str:
        """``nccl`` for CUDA devices, ``gloo`` otherwise."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def init(self) -> "DistributedContext":
        """Join the process group (only when distributed and not yet joined); returns ``self``."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.is_distributed and not dist.is_initialized():
            dist.init_process_group(self.backend, init_method="env://", rank=self.rank,
                                    world_size=self.world_size)
        return self

    def cleanup(self) -> None:
        """Leave the process group (safe to call when never joined)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def __enter__(self) -> "DistributedContext":
        return self.init()

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()

    def barrier(self) -> None:
        """Wait for every process (e.g. until rank 0 has written a checkpoint)."""
        if self._active():
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over all processes, as a new tensor (the input is left unchanged)."""
        if not tensor.is_floating_point():
            raise ValueError(f"all_reduce_mean needs a floating-point tensor, got dtype {tensor.dtype}")
        result = tensor.detach().clone()
        if self._active():
            dist.all_reduce(result, op=dist.ReduceOp.SUM)
            result /= self.world_size
        return result

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self._active():
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def wrap(self, model: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed, else ``model`` unchanged.

        The model must already be on :attr:`device`; DDP broadcasts rank 0's weights at wrap time.
        """
        if not self.is_distributed:
            return model
        if not self._active():
            raise RuntimeError("DistributedContext.wrap needs init() to have been called first")
        first = next(model.parameters(), None)
        if first is not None and first.device.type != self.device.type:
            raise ValueError(f"model is on {first.device} but this process trains on {self.device}; "
                             "call model.to(ctx.device) before wrap()")
        device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each gradient of ``module`` by its mean over processes (for modules outside DDP)."""
        if not self._active():
            return
        for p in module.parameters():
            if p.grad is not None:
                p.grad.copy_(self.all_reduce_mean(p.grad))

    def sampler(self, dataset: Sized, shuffle: bool = True, seed: int = 0,
                drop_last: bool = False) -> ShardedSampler:
        """This process's :class:`ShardedSampler` (the whole dataset for one process)."""
        return ShardedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                              shuffle=shuffle, seed=seed, drop_last=drop_last)

    def _active(self) -> bool:
        return self.is_distributed and dist.is_initialized()


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} must be an integer") from None


__all__ = ["DistributedContext", "ShardedSampler", "unwrap_model"]
