"""One rank of tests/test_distributed.py's two-process check, run as its own interpreter.

``python tests/ddp_worker.py OUT_DIR`` with ``RANK``/``WORLD_SIZE``/``MASTER_*`` set: joins the
gloo group, runs DDP, gradient accumulation and the sharded sampler, and saves what it saw to
``OUT_DIR/rank{RANK}.pt`` for the test to compare with one process.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
from torch import nn

from latent_diffusion.training import DistributedContext, GradientAccumulator, unwrap_model

DATASET = 10


def data() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The batch of 8 and the initial weights every rank and the reference start from."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)
    weights = {"weight": torch.randn(2, 3, generator=g), "bias": torch.randn(2, generator=g)}
    return x, y, weights


def model(weights: dict[str, torch.Tensor]) -> nn.Linear:
    """A linear layer holding ``weights``."""
    layer = nn.Linear(3, 2)
    layer.load_state_dict(weights)
    return layer


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter's gradient, by name."""
    return {name: p.grad.detach().clone() for name, p in unwrap_model(module).named_parameters()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(**extra: str) -> dict[str, str]:
    """The environment for test ranks: one thread each, and gloo kept on the loopback interface.

    Without ``GLOO_SOCKET_IFNAME`` gloo picks the address the machine's hostname resolves to,
    which in containers and sandboxes may be an interface the ranks cannot reach each other on
    (they then wait for each other until the 30-minute collective timeout).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    if any(name == "lo" for _, name in socket.if_nameindex()):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def main(out_dir: str) -> None:
    """Run this rank's share and save its results."""
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    ctx = DistributedContext(device="cpu").init()
    try:
        result: dict = {"is_main": ctx.is_main, "rank": ctx.rank}
        result["mean"] = ctx.all_reduce_mean(torch.tensor([rank + 1.0, 10.0 * (rank + 1)]))

        x, y, weights = data()
        rows = slice(4 * rank, 4 * rank + 4)  # each process holds half of the batch of 8
        net = ctx.wrap(model(weights))
        assert isinstance(net, nn.parallel.DistributedDataParallel)
        nn.functional.mse_loss(net(x[rows]), y[rows]).backward()
        result["ddp_grads"] = grads(net)

        net.zero_grad()
        accumulator = GradientAccumulator(accum_steps=2)
        for micro in range(2):
            part = slice(4 * rank + 2 * micro, 4 * rank + 2 * micro + 2)
            with accumulator.micro_batch(net) as mb:
                mb.backward(nn.functional.mse_loss(net(x[part]), y[part]))
            result[f"accum_grads_{micro}"] = grads(net)

        sampler = ctx.sampler(range(DATASET), shuffle=True, seed=3)
        sampler.set_epoch(1)
        result["shards"] = ctx.all_gather_object(list(sampler))
        ctx.barrier()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        ctx.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
