"""Step time of the training configs in each speed mode, and the share of it spent waiting for data.

Modes: ``fp32``, ``bf16`` (autocast), ``+cl`` (channels_last memory format) and ``+compile``
(``run.compile``: ``torch.compile`` of the trained network, inductor; its compile time is printed apart and not in
the step time). For each stage config it builds the real trainer (stage 2 on a random autoencoder
of the stage-1 architecture when no trained one exists, so it runs on a fresh machine once the
data is prepared), runs warm-up steps, then times N steps and, inside them, the time spent getting
the next batch (stage 1: the DataLoader; stage 2: gathering latents and conditions). The peer is
fp32 eager in the same run: the last column is the mode's time over fp32's. What the CPU has (bf16
units, threads) is printed above the table; on a CPU without bf16 units bf16 modes are skipped.

    python benchmarks/training_step.py [--steps 5] [--modes fp32 bf16 bf16+cl bf16+compile]
        [--autoencoder-configs configs/emoji-styles-autoencoder.yaml ...]
        [--diffusion-configs configs/emoji-styles-diffusion.yaml ...] [--latent-cache RUN/cache]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.hardware import cpu_bf16_units, describe_cpu
from latent_diffusion.io import save_module
from latent_diffusion.training.autoencoder import AutoencoderTrainer, AutoencoderTrainingConfig
from latent_diffusion.training.diffusion import DiffusionTrainer, DiffusionTrainingConfig

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 2  # the first steps allocate, fill caches and (with +compile) compile
MODES = ("fp32", "bf16", "fp32+cl", "bf16+cl", "fp32+compile", "bf16+compile")
DEFAULT_AUTOENCODERS = ("configs/emoji-styles-autoencoder.yaml", "configs/emoji-styles-autoencoder-f8.yaml")
DEFAULT_DIFFUSION = ("configs/emoji-styles-diffusion.yaml",)


def mode_overrides(mode: str, run_dir: Path) -> list[str]:
    """Config overrides of one mode."""
    precision = mode.split("+")[0]
    return [f"run.precision={precision}", f"run.channels_last={'+cl' in mode}", f"run.compile={'+compile' in mode}",
            f"run.run_dir={run_dir}"]


def seconds_of(step, count: int) -> float:
    """Wall seconds of ``count`` calls of ``step()``."""
    began = time.perf_counter()
    for _ in range(count):
        step()
    return time.perf_counter() - began


def time_autoencoder(config_path: Path, mode: str, steps: int, work: Path) -> dict[str, float]:
    """Stage 1 in one mode: s/step, data-wait share and warm-up (compile) seconds."""
    config = AutoencoderTrainingConfig.load(config_path)
    # The adversarial term on from the start, so every mode times the full loss.
    config = config.with_overrides(mode_overrides(mode, work / f"ae-{mode}") + ["loss.disc_start=0"])
    trainer = AutoencoderTrainer(config)
    loader = iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=config.run.batch_size, shuffle=True,
                                              num_workers=config.run.num_workers))
    waiting = 0.0

    def step() -> None:
        nonlocal waiting
        fetch = time.perf_counter()
        images = next(loader)["image"]
        waiting += time.perf_counter() - fetch
        trainer.train_step(images)

    warm = seconds_of(step, WARMUP_STEPS)
    waiting = 0.0
    total = seconds_of(step, steps)
    return {"s_per_step": total / steps, "wait": waiting / total, "warmup_s": warm}


def stage1_folder(config: DiffusionTrainingConfig, stage1_config: Path, work: Path) -> Path:
    """The configured autoencoder if it exists, else a random one of the stage-1 architecture."""
    folder = Path(config.autoencoder)
    folder = folder if folder.is_absolute() else ROOT / folder
    if (folder / "autoencoder.json").is_file():
        return folder
    stage1 = AutoencoderTrainingConfig.load(stage1_config)
    folder = work / "random-autoencoder"
    if not folder.is_dir():
        save_module(Autoencoder(stage1.model), stage1.model, folder, "autoencoder")
    return folder


def time_diffusion(config_path: Path, mode: str, steps: int, work: Path, stage1_config: Path,
                   cache_dir: Path | None = None) -> dict[str, float]:
    """Stage 2 in one mode: s/step, share gathering the batch from the latent cache, warm-up seconds.
    ``cache_dir``: an existing latent cache folder to read (e.g. a training run's ``cache/``)."""
    config = DiffusionTrainingConfig.load(config_path)
    autoencoder = stage1_folder(config, stage1_config, work)
    # One latent cache for every mode (its files are named by the autoencoder's digest and the data
    # settings), so the pictures are encoded once, not once per mode.
    config = config.with_overrides(mode_overrides(mode, work / f"unet-{mode}")
                                   + [f"autoencoder={autoencoder}", f"cache_dir={cache_dir or work / 'latents'}"])
    trainer = DiffusionTrainer(config)
    waiting = 0.0
    original = trainer._conditions

    def timed_conditions(*args, **kwargs):
        nonlocal waiting
        began = time.perf_counter()
        result = original(*args, **kwargs)
        waiting += time.perf_counter() - began
        return result

    trainer._conditions = timed_conditions  # type: ignore[method-assign]
    warm = seconds_of(trainer.train_step, WARMUP_STEPS)
    waiting = 0.0
    total = seconds_of(trainer.train_step, steps)
    return {"s_per_step": total / steps, "wait": waiting / total, "warmup_s": warm}


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--autoencoder-configs", nargs="*", default=list(DEFAULT_AUTOENCODERS))
    parser.add_argument("--diffusion-configs", nargs="*", default=list(DEFAULT_DIFFUSION))
    parser.add_argument("--latent-cache", type=Path, default=None, metavar="DIR",
                        help="a latent cache folder to share (e.g. RUN/cache of a stage-2 run on the same data and "
                             "autoencoder); default: one made in a temporary folder, encoded once for all modes")
    args = parser.parse_args()
    modes = list(args.modes)
    print(describe_cpu())
    if cpu_bf16_units() is None and not torch.cuda.is_available():
        modes = [m for m in modes if not m.startswith("bf16")]
        print("bf16 modes skipped: this CPU has no bf16 matrix units (a bf16 run would take hours)")
    print(f"steps={args.steps} (after {WARMUP_STEPS} warm-up steps; warm-up includes compilation)")
    print(f"{'config':46s} {'mode':13s} {'s/step':>7s} {'data wait':>9s} {'warm-up s':>9s} {'vs fp32':>7s}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = [(path, mode, lambda p, m: time_autoencoder(ROOT / p, m, args.steps, work))
                 for path in args.autoencoder_configs for mode in modes]
        cases += [(path, mode, lambda p, m: time_diffusion(ROOT / p, m, args.steps, work,
                                                           ROOT / DEFAULT_AUTOENCODERS[0], args.latent_cache))
                  for path in args.diffusion_configs for mode in modes]
        fp32: dict[str, float] = {}
        for path, mode, measure in cases:
            # One mode that fails (a compiler error, say) is a row that says so, not a lost table.
            try:
                r = measure(path, mode)
            except Exception as error:  # noqa: BLE001 - reported in the table, the other rows still run
                print(f"{path:46s} {mode:13s} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}",
                      flush=True)
                continue
            if mode == "fp32":
                fp32[path] = r["s_per_step"]
            ratio = f"{r['s_per_step'] / fp32[path]:7.2f}" if path in fp32 else f"{'-':>7s}"
            print(f"{path:46s} {mode:13s} {r['s_per_step']:7.3f} {r['wait']:9.1%} {r['warmup_s']:9.1f} {ratio}",
                  flush=True)


if __name__ == "__main__":
    main()
