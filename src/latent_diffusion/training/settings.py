"""Run and optimizer settings shared by both training stages (part of each stage's YAML config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latent_diffusion.config import Config
from latent_diffusion.training.optim import check_lr_scale
from latent_diffusion.validation import check_positive


@dataclass
class OptimConfig(Config):
    """AdamW with linear warm-up, gradient clipping and accumulation."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    # Multipliers of lr by parameter name prefix of the trained network (the UNet, the autoencoder or
    # its tiny decoder, the distilled student; not the discriminator, which has disc_lr), e.g.
    # {context_pool_proj: 10} to let a layer added by init_from learn faster than the trained weights
    # it joins (training/optim.py: scaled_param_groups).
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_positive("optim.lr", self.lr)
        check_lr_scale(self.lr_scale)
        check_positive("optim.weight_decay", self.weight_decay, allow_zero=True)
        check_positive("optim.warmup_steps", self.warmup_steps, allow_zero=True)
        check_positive("optim.grad_accum", self.grad_accum)
        if self.grad_clip is not None:
            check_positive("optim.grad_clip", self.grad_clip)


@dataclass
class RunConfig(Config):
    """Where a run writes, how long it lasts, how often it logs, samples and checkpoints."""

    run_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    # auto: bf16 autocast where the device has bf16 matrix units (latent_diffusion.hardware), else fp32.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    # channels_last memory format for the trained model's convolutions (measured slower on CPU for
    # these models; kept for GPUs, where it usually pays).
    channels_last: bool = False
    # torch.compile (inductor) of the trained network, in place; its first steps compile (about
    # 100 s for the default UNet on 2 cores). benchmarks/training_step.py measures it per config.
    compile: bool = False
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 10
    image_every: int = 500
    checkpoint_every: int = 500
    keep_last: int = 3

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "log_every", "image_every", "checkpoint_every", "keep_last"):
            check_positive(f"run.{name}", getattr(self, name))
        check_positive("run.num_workers", self.num_workers, allow_zero=True)


def batches_per_epoch(items: int, per_step: int, knobs: str = "run.batch_size") -> int:
    """Global batches of ``per_step`` items in one pass over ``items``; a ValueError naming ``knobs``
    when not even one fits (checked before a run writes anything)."""
    if items // per_step == 0:
        raise ValueError(f"the dataset has {items} items, fewer than one global batch ({per_step}); lower {knobs}")
    return items // per_step
