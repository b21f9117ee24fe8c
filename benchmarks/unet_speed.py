"""UNet forward and training-step speed, fp32 vs bf16 autocast, against this machine's matmul peak.

Prints one table: for two UNet sizes, the time of a forward pass and of a training step (forward,
backward, AdamW step), the FLOPs counted by ``torch.utils.flop_counter``, the achieved FLOP/s and
that as a fraction of a large matmul's FLOP/s measured in the same run and the same dtype. The
matmul is the peer: the ratio says how much of the machine the UNet uses, whatever the machine.

    python benchmarks/unet_speed.py [--repeats 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_diffusion.unet import UNet, UNetConfig

SIZES = {
    # The shipped-model class of size: 16x16x4 latents (64 px images at f=4), MiniLM context.
    "small": UNetConfig(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                        num_res_blocks=2, attention_levels=(1, 2), num_heads=4, context_dim=384),
    # A larger model on 32x32x4 latents.
    "medium": UNetConfig(in_channels=4, out_channels=4, model_channels=128, channel_mult=(1, 2, 4),
                         num_res_blocks=2, attention_levels=(1, 2), num_heads=8, context_dim=384),
}
LATENT_SIZE = {"small": 16, "medium": 32}
CONTEXT_LENGTH = 77


def autocast(dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU, or nothing for fp32."""
    if dtype == torch.bfloat16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_times(fn, repeats: int, warmup: bool = True) -> list[float]:
    """Wall seconds of each of ``repeats`` runs of ``fn``, after one warm-up call unless not."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def alternated_medians(calls: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall seconds of each of ``calls`` (name -> function) over ``repeats`` rounds in which
    every call runs once in turn, so that a slow spell of a shared machine falls on all of them;
    each call runs ``warmup`` times first."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of ``fn`` over ``repeats`` runs after one warm-up (least noisy estimate)."""
    return min(run_times(fn, repeats))


def matmul_peak(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (the machine's practical peak)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    seconds = best_time(lambda: a @ b, repeats)
    return 2 * n**3 / seconds


def unet_inputs(name: str, batch: int) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes for one benchmark size."""
    config = SIZES[name]
    size = LATENT_SIZE[name]
    return {
        "x": torch.randn(batch, config.in_channels, size, size),
        "timesteps": torch.randint(0, 1000, (batch,)),
        "context": torch.randn(batch, CONTEXT_LENGTH, config.context_dim),
        "context_mask": torch.ones(batch, CONTEXT_LENGTH, dtype=torch.bool),
    }


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` as counted by PyTorch's dispatcher-level counter."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(name: str, dtype: torch.dtype, batch: int, repeats: int) -> dict[str, float]:
    """Forward and training-step time and FLOPs for one size and dtype."""
    torch.manual_seed(0)
    model = UNet(SIZES[name])
    inputs = unet_inputs(name, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn_like(inputs["x"])

    def forward() -> None:
        with torch.no_grad(), autocast(dtype):
            model(**inputs)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(dtype):
            loss = torch.nn.functional.mse_loss(model(**inputs).float(), target)
        loss.backward()
        optimizer.step()

    model.eval()
    forward_flops = count_flops(forward)
    forward_s = best_time(forward, repeats)
    model.train()
    train_flops = count_flops(train_step)
    train_s = best_time(train_step, repeats)
    return {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "forward_s": forward_s,
        "forward_flops": forward_flops,
        "train_s": train_s,
        "train_flops": train_flops,
    }


def main() -> None:
    """Run every size in fp32 and bf16 and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # A small bf16 probe first: on CPUs without bf16 matrix units (no AVX512-BF16 / AMX) bf16
    # matmuls fall back to a scalar path hundreds of times slower, and a full run would take hours.
    probe = {dtype: matmul_peak(dtype, 1, n=256) for dtype in (torch.float32, torch.bfloat16)}
    dtypes = [torch.float32]
    if probe[torch.bfloat16] > 0.25 * probe[torch.float32]:
        dtypes.append(torch.bfloat16)
    peaks = {dtype: matmul_peak(dtype, args.repeats) for dtype in dtypes}
    print(f"threads={args.threads} batch={args.batch} repeats={args.repeats} (best of)")
    for dtype, peak in peaks.items():
        print(f"matmul 2048^3 peak {str(dtype):15s} {peak / 1e9:8.1f} GFLOP/s")
    if torch.bfloat16 not in dtypes:
        print(f"bf16 skipped: a 256^3 bf16 matmul runs at {probe[torch.bfloat16] / 1e9:.2f} GFLOP/s against "
              f"{probe[torch.float32] / 1e9:.1f} in fp32 (this CPU has no bf16 matrix units); train in fp32 here")
    header = (f"{'size':7s} {'dtype':9s} {'params':>7s} {'fwd ms':>8s} {'fwd GF/s':>9s} {'fwd/peak':>8s} "
              f"{'step ms':>8s} {'step GF/s':>9s} {'step/peak':>9s}")
    print(header)
    print("-" * len(header))
    for name in SIZES:
        for dtype in dtypes:
            r = measure(name, dtype, args.batch, args.repeats)
            fwd_rate = r["forward_flops"] / r["forward_s"]
            step_rate = r["train_flops"] / r["train_s"]
            short = "fp32" if dtype == torch.float32 else "bf16"
            print(f"{name:7s} {short:9s} {r['params_m']:6.1f}M {r['forward_s'] * 1e3:8.1f} "
                  f"{fwd_rate / 1e9:9.1f} {fwd_rate / peaks[dtype]:8.2f} {r['train_s'] * 1e3:8.1f} "
                  f"{step_rate / 1e9:9.1f} {step_rate / peaks[dtype]:9.2f}")


if __name__ == "__main__":
    main()
