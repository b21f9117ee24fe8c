"""Sampling: discretizations, the discrete-model denoiser, samplers, classifier-free guidance,
mask-guided inpainting."""

from latent_diffusion.sampling.denoiser import ConsistencyDenoiser, DiscreteDenoiser
from latent_diffusion.sampling.discretization import (
    SPACINGS,
    get_sigmas,
    get_timesteps,
    initial_latent,
    karras_sigmas,
    noised_latent,
    sigmas_for_strength,
)
from latent_diffusion.sampling.guidance import CFGDenoiser, concat_conditions, rescale_guidance
from latent_diffusion.sampling.masking import MaskedDenoiser, latent_keep_mask
from latent_diffusion.sampling.samplers import (
    SAMPLERS,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
)

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "CFGDenoiser",
    "ConsistencyDenoiser",
    "DiscreteDenoiser",
    "MaskedDenoiser",
    "concat_conditions",
    "get_sampler",
    "get_sigmas",
    "get_timesteps",
    "initial_latent",
    "karras_sigmas",
    "latent_keep_mask",
    "noised_latent",
    "rescale_guidance",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sigmas_for_strength",
]
