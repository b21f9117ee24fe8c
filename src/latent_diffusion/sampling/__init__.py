"""Sampling: discretizations, the discrete-model denoiser, samplers, classifier-free guidance."""

from latent_diffusion.sampling.denoiser import DiscreteDenoiser
from latent_diffusion.sampling.discretization import (
    SPACINGS,
    get_sigmas,
    get_timesteps,
    initial_latent,
    karras_sigmas,
)
from latent_diffusion.sampling.guidance import CFGDenoiser, concat_conditions, rescale_guidance
from latent_diffusion.sampling.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "CFGDenoiser",
    "DiscreteDenoiser",
    "concat_conditions",
    "get_sampler",
    "get_sigmas",
    "get_timesteps",
    "initial_latent",
    "karras_sigmas",
    "rescale_guidance",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
]
