"""The diffusion process: noise schedule, forward noising, prediction parameterizations, objective."""

from latent_diffusion.diffusion.objective import diffusion_loss, min_snr_weight, sample_timesteps
from latent_diffusion.diffusion.parameterization import PREDICTIONS, convert, target, to_eps, to_v, to_x0
from latent_diffusion.diffusion.schedule import SCHEDULES, DiffusionConfig, NoiseSchedule, make_betas

__all__ = [
    "PREDICTIONS",
    "SCHEDULES",
    "DiffusionConfig",
    "NoiseSchedule",
    "convert",
    "diffusion_loss",
    "make_betas",
    "min_snr_weight",
    "sample_timesteps",
    "target",
    "to_eps",
    "to_v",
    "to_x0",
]
