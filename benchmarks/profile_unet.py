"""Where an SD 1.5 UNet forward spends its time: ours against diffusers', op by op, fp32 eager.

The same random weights in both (converted with our converter, as ``vs_diffusers.py`` does), one
guided step's batch (2 x 4 x 64 x 64 latents at 512 px), a warm-up forward each, then forwards
alternated under ``torch.profiler``; the table lists the ops with the most self CPU time over both,
with ours over diffusers' per op and in total. It answers whether a gap in ``vs_diffusers.py``'s
UNet row is noise (same ops, same times) or real (an op that costs more, or one that only one side
runs).

    python benchmarks/profile_unet.py [--size 512] [--repeats 2] [--top 20]
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile
from vs_diffusers import build_ours  # benchmarks/ is on sys.path when a script here runs

from latent_diffusion.convert.unet_keys import unet_config_to_diffusers, unet_to_diffusers
from latent_diffusion.hardware import describe_cpu


def diffusers_unet(ours: torch.nn.Module, latent_size: int) -> torch.nn.Module:
    """diffusers' UNet2DConditionModel holding exactly ``ours``' weights."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet_config_to_diffusers(ours.config, latent_size).items() if not k.startswith("_")}
    theirs = UNet2DConditionModel(**config)
    theirs.load_state_dict(unet_to_diffusers(ours.state_dict(), ours.config), strict=True)
    return theirs.eval()


def self_times(fn, repeats: int) -> tuple[dict[str, float], float]:
    """Self CPU seconds per op name over ``repeats`` calls of ``fn``, and the wall seconds per call."""
    import time

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        wall = (time.perf_counter() - start) / repeats
    times: dict[str, float] = collections.defaultdict(float)
    for event in prof.key_averages():
        times[event.key] += event.self_cpu_time_total / 1e6 / repeats
    return times, wall


def main() -> None:
    """Print the per-op table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(describe_cpu())
    components = build_ours(args.size)
    ours, latent = components.unet.eval(), args.size // 8
    theirs = diffusers_unet(ours, latent)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g)
    t = torch.tensor([981.0, 981.0])
    context = torch.randn(2, 77, 768, generator=g)
    with torch.no_grad():
        def run_ours() -> torch.Tensor:
            return ours(x, t, context=context)

        def run_theirs() -> torch.Tensor:
            return theirs(x, t, encoder_hidden_states=context).sample

        torch.testing.assert_close(run_ours(), run_theirs(), atol=1e-3, rtol=1e-3)  # also the warm-up
        mine, mine_wall = self_times(run_ours, args.repeats)
        other, other_wall = self_times(run_theirs, args.repeats)
    print(f"SD 1.5 UNet forward, batch 2, {latent}x{latent} latents, fp32 eager, {args.repeats} profiled calls each")
    print(f"wall per call: ours {mine_wall:.2f} s, diffusers {other_wall:.2f} s, ratio {mine_wall / other_wall:.3f} "
          "(the profiler adds its own overhead to both)")
    names = sorted(set(mine) | set(other), key=lambda k: -(mine.get(k, 0.0) + other.get(k, 0.0)))
    header = f"{'op':44s} {'ours s':>8s} {'diffusers s':>11s} {'ratio':>7s}"
    print(header)
    print("-" * len(header))
    for name in names[:args.top]:
        a, b = mine.get(name, 0.0), other.get(name, 0.0)
        ratio = f"{a / b:7.2f}" if b > 0 else "      -"
        print(f"{name[:44]:44s} {a:8.3f} {b:11.3f} {ratio}")
    total_a, total_b = sum(mine.values()), sum(other.values())
    print(f"{'all ops (self CPU time)':44s} {total_a:8.3f} {total_b:11.3f} {total_a / total_b:7.2f}")


if __name__ == "__main__":
    main()
