"""Step time of the two default training configs, fp32 vs bf16 autocast, and the share of data waiting.

For ``configs/emoji-autoencoder.yaml`` (stage 1) and ``configs/emoji-diffusion.yaml`` (stage 2)
it builds the real trainers (stage 2 on a random autoencoder of the stage-1 architecture when no
trained one exists, so it runs on a fresh machine once the emoji data is prepared), runs a few
warm-up steps, then times N steps and, inside them, the time spent waiting for the next batch.
The peer is the other precision in the same run: the table prints bf16 / fp32.

    python benchmarks/training_step.py [--steps 5] [--precisions fp32 bf16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.io import save_module
from latent_diffusion.training.autoencoder import AutoencoderTrainer, AutoencoderTrainingConfig
from latent_diffusion.training.diffusion import DiffusionTrainer, DiffusionTrainingConfig

ROOT = Path(__file__).resolve().parents[1]


def time_autoencoder(precision: str, steps: int, work: Path) -> tuple[float, float]:
    """(seconds per step, share of it waiting for data) for stage 1."""
    config = AutoencoderTrainingConfig.load(ROOT / "configs" / "emoji-autoencoder.yaml")
    config = config.with_overrides([f"run.precision={precision}", f"run.run_dir={work / ('ae-' + precision)}",
                                    "loss.disc_start=0"])
    trainer = AutoencoderTrainer(config)
    loader = iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=config.run.batch_size, shuffle=True,
                                              num_workers=config.run.num_workers))
    trainer.train_step(next(loader)["image"])  # warm-up
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        fetch = time.perf_counter()
        images = next(loader)["image"]
        waiting += time.perf_counter() - fetch
        trainer.train_step(images)
    total = time.perf_counter() - start
    return total / steps, waiting / total


def time_diffusion(precision: str, steps: int, work: Path) -> tuple[float, float]:
    """(seconds per step, share of it gathering the batch from the latent cache) for stage 2."""
    config = DiffusionTrainingConfig.load(ROOT / "configs" / "emoji-diffusion.yaml")
    autoencoder = Path(config.autoencoder)
    if not (ROOT / autoencoder / "autoencoder.json").is_file():
        stage1 = AutoencoderTrainingConfig.load(ROOT / "configs" / "emoji-autoencoder.yaml")
        autoencoder = work / "random-autoencoder"
        save_module(Autoencoder(stage1.model), stage1.model, autoencoder, "autoencoder")
    else:
        autoencoder = ROOT / autoencoder
    config = config.with_overrides([f"run.precision={precision}", f"run.run_dir={work / 'diffusion'}",
                                    f"autoencoder={autoencoder}"])
    trainer = DiffusionTrainer(config)
    trainer.train_step()  # warm-up (and the caches are built before this)
    waiting = 0.0
    original = trainer._conditions

    def timed_conditions(*args, **kwargs):
        nonlocal waiting
        began = time.perf_counter()
        result = original(*args, **kwargs)
        waiting += time.perf_counter() - began
        return result

    trainer._conditions = timed_conditions  # type: ignore[method-assign]
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    total = time.perf_counter() - start
    return total / steps, waiting / total


def bf16_is_accelerated() -> bool:
    """Whether a bf16 matmul runs at least a quarter as fast as fp32 here (else a bf16 run takes hours)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(256, 256, dtype=dtype)
        a @ a
        start = time.perf_counter()
        a @ a
        rates[dtype] = 1 / max(time.perf_counter() - start, 1e-9)
    return rates[torch.bfloat16] > 0.25 * rates[torch.float32]


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--stages", nargs="+", default=["autoencoder", "diffusion"],
                        choices=["autoencoder", "diffusion"])
    args = parser.parse_args()
    precisions = list(args.precisions)
    if "bf16" in precisions and not bf16_is_accelerated():
        precisions.remove("bf16")
        print("bf16 skipped: bf16 matmuls on this CPU run far below fp32 (no bf16 matrix units); "
              "see benchmarks/unet_speed.py for the measured rates")
    results: dict[tuple[str, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            for precision in precisions:
                fn = time_autoencoder if stage == "autoencoder" else time_diffusion
                results[stage, precision] = fn(precision, args.steps, Path(tmp))
    print(f"threads={torch.get_num_threads()} steps={args.steps}")
    print(f"{'stage':12s} {'precision':9s} {'s/step':>8s} {'data wait':>10s} {'vs fp32':>8s}")
    for (stage, precision), (seconds, wait) in results.items():
        base = results.get((stage, "fp32"), (seconds, 0))[0]
        print(f"{stage:12s} {precision:9s} {seconds:8.3f} {wait:9.1%} {seconds / base:8.2f}")


if __name__ == "__main__":
    main()
