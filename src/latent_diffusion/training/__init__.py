"""Training infrastructure shared by the autoencoder and latent-diffusion stages.

EMA of weights, AdamW with warm-up, gradient accumulation, RNG capture, crash-safe
checkpoints, torchrun data parallelism, logging and sample grids. The stage-specific loops
build on these pieces.
"""

from latent_diffusion.training.checkpoint import CheckpointError, CheckpointManager, check_weights_only_safe
from latent_diffusion.training.distributed import DistributedContext, ShardedSampler, unwrap_model
from latent_diffusion.training.ema import EMA
from latent_diffusion.training.grid import make_grid, save_grid, to_uint8
from latent_diffusion.training.logging import TrainingLogger, read_metrics
from latent_diffusion.training.optim import (
    GradientAccumulator,
    MicroBatch,
    build_optimizer,
    clip_grad,
    lr_factor,
    warmup_schedule,
)
from latent_diffusion.training.rng import capture_rng_state, restore_rng_state, seed_everything

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
    "capture_rng_state",
    "check_weights_only_safe",
    "clip_grad",
    "lr_factor",
    "make_grid",
    "read_metrics",
    "restore_rng_state",
    "save_grid",
    "seed_everything",
    "to_uint8",
    "unwrap_model",
    "warmup_schedule",
]
