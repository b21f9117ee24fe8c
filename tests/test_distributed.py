"""Data parallelism: two real gloo processes on CPU, and the sampler against DistributedSampler."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler

from latent_diffusion.training import DistributedContext, GradientAccumulator, ShardedSampler, unwrap_model

WORLD = 2
DATASET = 10


def _data() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    weights = {"weight": torch.randn(2, 3, generator=g), "bias": torch.randn(2, generator=g)}
    return x, y, weights


def _model(weights: dict[str, torch.Tensor]) -> nn.Linear:
    model = nn.Linear(3, 2)
    model.load_state_dict(weights)
    return model


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in unwrap_model(model).named_parameters()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = DistributedContext(device="cpu").init()
    try:
        result: dict = {"is_main": ctx.is_main, "rank": ctx.rank}
        result["mean"] = ctx.all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))

        x, y, weights = _data()
        rows = slice(4 * rank, 4 * rank + 4)  # each process holds half of the batch of 8
        model = ctx.wrap(_model(weights))
        assert isinstance(model, nn.parallel.DistributedDataParallel)
        nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        result["ddp_grads"] = _grads(model)

        model.zero_grad()
        accumulator = GradientAccumulator(accum_steps=2)
        for micro in range(2):
            part = slice(4 * rank + 2 * micro, 4 * rank + 2 * micro + 2)
            with accumulator.micro_batch(model) as mb:
                mb.backward(nn.functional.mse_loss(model(x[part]), y[part]))
            result[f"accum_grads_{micro}"] = _grads(model)

        sampler = ctx.sampler(range(DATASET), shuffle=True, seed=3)
        sampler.set_epoch(1)
        result["shards"] = ctx.all_gather_object(list(sampler))
        ctx.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        ctx.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    # fork (where available) reuses the parent's imported modules; a fresh interpreter per rank
    # would spend most of the test importing torch again. DDP's constructor imports
    # torch._dynamo (seconds: sympy, fx) on first use, so import it once here, not per child.
    with contextlib.suppress(ImportError):
        importlib.import_module("torch._dynamo")
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method=method)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["is_main"] for r in results] == [True, False]

    for r in results:
        torch.testing.assert_close(r["mean"], torch.tensor([1.5, 15.0]))

    # Reference: one process, the whole batch of 8 at once.
    x, y, weights = _data()
    reference = _model(weights)
    nn.functional.mse_loss(reference(x), y).backward()
    full = _grads(reference)
    for r in results:
        for name in full:
            torch.testing.assert_close(r["ddp_grads"][name], full[name])
            torch.testing.assert_close(r["accum_grads_1"][name], full[name])

    # The first micro-batch ran under no_sync: rank 0 holds only its own, unaveraged gradient.
    local = _model(weights)
    (nn.functional.mse_loss(local(x[0:2]), y[0:2]) / 2).backward()
    for name, grad in _grads(local).items():
        torch.testing.assert_close(results[0]["accum_grads_0"][name], grad)

    shards = results[0]["shards"]
    assert shards == results[1]["shards"]
    assert len(shards[0]) == len(shards[1]) == DATASET // WORLD
    assert set(shards[0]).isdisjoint(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(DATASET))
    reference_sampler = DistributedSampler(range(DATASET), num_replicas=WORLD, rank=0, shuffle=True, seed=3)
    reference_sampler.set_epoch(1)
    assert shards[0] == list(reference_sampler)


@pytest.mark.parametrize("length,replicas,shuffle,drop_last", [
    (10, 2, True, False), (7, 3, True, False), (7, 3, True, True), (2, 4, False, False), (9, 1, True, False),
])
def test_sharded_sampler_matches_distributed_sampler(length: int, replicas: int, shuffle: bool,
                                                     drop_last: bool) -> None:
    dataset = range(length)
    for epoch in (0, 3):
        for rank in range(replicas):
            ours = ShardedSampler(dataset, replicas, rank, shuffle=shuffle, seed=11, drop_last=drop_last)
            theirs = DistributedSampler(dataset, replicas, rank, shuffle=shuffle, seed=11, drop_last=drop_last)
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)
            assert len(ours) == len(theirs)


def test_sampler_resumes_mid_epoch_and_differs_per_epoch() -> None:
    sampler = DistributedContext(env={}).sampler(range(20), seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == list(range(20))  # one process sees everything
    sampler.set_epoch(2, start=7)
    assert list(sampler) == full[7:] and len(sampler) == 13
    sampler.set_epoch(3)
    assert list(sampler) != full
    with pytest.raises(ValueError, match="start"):
        sampler.set_epoch(3, start=21)


def test_single_process_context_needs_no_environment() -> None:
    ctx = DistributedContext(env={})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.is_distributed) == (0, 1, 0, True, False)
    with ctx:
        model = nn.Linear(2, 2)
        assert ctx.wrap(model) is model
        value = torch.tensor([1.0, 2.0])
        mean = ctx.all_reduce_mean(value)
        assert torch.equal(mean, value) and mean is not value
        ctx.barrier()
        assert ctx.all_gather_object({"a": 1}) == [{"a": 1}]
    with pytest.raises(ValueError, match="floating-point"):
        ctx.all_reduce_mean(torch.tensor([1, 2]))


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK"),
    ({"RANK": "one"}, "RANK"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
])
def test_bad_environment_is_reported(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DistributedContext(env=env)
