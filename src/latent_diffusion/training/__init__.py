"""Training infrastructure shared by the autoencoder and latent-diffusion stages.

EMA of weights, AdamW with warm-up, gradient accumulation, crash-safe checkpoints, torchrun data
parallelism and logging (grids: :mod:`latent_diffusion.pixels`). The stage-specific loops build on
these pieces.
"""

from latent_diffusion.training.checkpoint import CheckpointError, CheckpointManager, check_weights_only_safe
from latent_diffusion.training.distributed import DistributedContext, ShardedSampler, unwrap_model
from latent_diffusion.training.ema import EMA
from latent_diffusion.training.logging import TrainingLogger, read_metrics
from latent_diffusion.training.optim import (
    GradientAccumulator,
    MicroBatch,
    build_optimizer,
    clip_grad,
    lr_factor,
    warmup_schedule,
)

__all__ = [
    "EMA",
    "CheckpointError",
    "CheckpointManager",
    "DistributedContext",
    "GradientAccumulator",
    "MicroBatch",
    "ShardedSampler",
    "TrainingLogger",
    "build_optimizer",
    "check_weights_only_safe",
    "clip_grad",
    "lr_factor",
    "read_metrics",
    "unwrap_model",
    "warmup_schedule",
]
