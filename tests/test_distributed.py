"""Data parallelism: two real gloo processes on CPU, and the sampler against DistributedSampler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from latent_diffusion.training import DistributedContext, ShardedSampler

from ddp_worker import DATASET, data, free_port, grads, loopback_env, model

WORLD = 2
WORKER = Path(__file__).with_name("ddp_worker.py")
RANK_TIMEOUT_S = 300


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    # Each rank is a fresh interpreter (not a fork of this multi-threaded pytest process, whose
    # locks a fork could copy in a held state), bounded by a timeout so a hang fails the test.
    port = str(free_port())
    ranks = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=loopback_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank),
                                               WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)))
             for rank in range(WORLD)]
    outputs = []
    try:
        for proc in ranks:
            outputs.append(proc.communicate(timeout=RANK_TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in ranks:
            proc.kill()
        pytest.fail(f"the two gloo ranks did not finish within {RANK_TIMEOUT_S} s: "
                    + " | ".join(proc.communicate()[0][-2000:] for proc in ranks))
    assert [proc.returncode for proc in ranks] == [0, 0], outputs
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["is_main"] for r in results] == [True, False]

    for r in results:
        torch.testing.assert_close(r["mean"], torch.tensor([1.5, 15.0]))

    # Reference: one process, the whole batch of 8 at once.
    x, y, weights = data()
    reference = model(weights)
    nn.functional.mse_loss(reference(x), y).backward()
    full = grads(reference)
    for r in results:
        for name in full:
            torch.testing.assert_close(r["ddp_grads"][name], full[name])
            torch.testing.assert_close(r["accum_grads_1"][name], full[name])

    # The first micro-batch ran under no_sync: rank 0 holds only its own, unaveraged gradient.
    local = model(weights)
    (nn.functional.mse_loss(local(x[0:2]), y[0:2]) / 2).backward()
    for name, grad in grads(local).items():
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
