"""The reverse process: seeded noise through a sampler over the model's denoiser, to latents.

No sampler knows about text and no network knows about samplers; this module is where they
meet. Noise is drawn as diffusers draws it: one CPU ``torch.Generator`` seeded with ``seed``,
one ``torch.randn`` of shape ``[batch, C, h, w]``, then the ancestral samplers' noise from the
same generator, so a seed names the same images on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.hardware import autocast
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.sampling import (
    CFGDenoiser,
    ConsistencyDenoiser,
    DiscreteDenoiser,
    MaskedDenoiser,
    get_sampler,
    get_sigmas,
    initial_latent,
    noised_latent,
    sigmas_for_strength,
)
from latent_diffusion.sampling.discretization import SPACINGS
from latent_diffusion.validation import check_choice, check_positive

# What a diffusion model samples with unless told, in `ldm generate` and `ldm eval` alike; a latent
# consistency model's folder has its own (ConsistencyConfig: the lcm sampler, its steps and guidance).
DEFAULT_SAMPLING = {"sampler": "dpmpp_2m", "steps": 25, "guidance": 5.0}
DEFAULT_SPACING = {"euler": "trailing", "euler_ancestral": "trailing", "heun": "karras",
                   "dpmpp_2m": "karras", "ddim": "trailing", "ddpm": "trailing", "lcm": "lcm"}


def sample_latents(
    components: DiffusionComponents,
    cond: dict[str, torch.Tensor],
    uncond: dict[str, torch.Tensor] | None,
    *,
    batch_size: int,
    seed: int,
    steps: int = 25,
    sampler: str = "dpmpp_2m",
    guidance: float = 5.0,
    rescale: float = 0.0,
    spacing: str | None = None,
    latent_size: int | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    sampler_options: dict[str, Any] | None = None,
    init_latents: torch.Tensor | None = None,
    strength: float = 1.0,
    keep: torch.Tensor | None = None,
    precision: str = "fp32",
    sigmas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse process from seeded noise to latents (the UNet's latent space, i.e. scaled
    by the autoencoder's scale factor).

    ``init_latents`` (image-to-image, SDEdit): start from these latents noised to the level that
    ``strength`` selects, and run only the remaining steps (:func:`sampling_sigmas`).
    ``keep`` (inpainting, needs ``init_latents``): latent mask, 1 where ``init_latents`` is kept
    (:class:`~latent_diffusion.sampling.masking.MaskedDenoiser`).
    ``precision``: ``fp32``, or ``bf16`` to run the UNet under bf16 autocast (the sampler's own
    arithmetic stays float32; :class:`AutocastDenoiser`).
    ``sigmas``: the noise levels :func:`sampling_sigmas` gives for these arguments, when the caller
    already computed them (a pipeline sizes its progress bar with them); None computes them here.
    A latent consistency model (``components.consistency``) is given ``guidance`` as an input of its
    UNet and called once per step (no unconditional pass); it needs the ``lcm`` sampler.
    """
    sampler_fn = get_sampler(sampler)
    consistency = components.consistency
    if consistency is not None:
        check_consistency_call(components, sampler, steps, guidance, rescale)
    if sigmas is None:
        sigmas = sampling_sigmas(components, steps, sampler, spacing, strength if init_latents is not None else 1.0)
    check_positive("batch_size", batch_size)
    size = latent_size or components.latent_size
    unet = components.unet
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    shape = (batch_size, unet.config.in_channels, size, size)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=generator)
    if init_latents is None:
        if keep is not None:
            raise ValueError("keep (an inpainting mask) needs init_latents, the latents of the image to inpaint")
        x = initial_latent(noise, sigmas).to(device=device, dtype=dtype)
    else:
        if tuple(init_latents.shape) != shape:
            raise ValueError(f"init_latents of shape {tuple(init_latents.shape)} do not match the batch {shape}")
        init_latents = init_latents.to(device=device, dtype=dtype)
        noise = noise.to(device=device, dtype=dtype)
        x = noised_latent(init_latents, noise, sigmas[0])
    inner = DiscreteDenoiser(unet, components.schedule, components.diffusion.prediction)
    if consistency is None:
        denoiser = CFGDenoiser(inner, scale=guidance, rescale=rescale)
    else:
        cond = {**cond, "timestep_cond": consistency.guidance_condition(guidance, batch_size).to(device, dtype)}
        uncond = None
        denoiser = CFGDenoiser(ConsistencyDenoiser(inner, consistency.timestep_scaling, consistency.sigma_data),
                               scale=1.0)
    if keep is not None:
        denoiser = MaskedDenoiser(denoiser, init_latents, keep.to(device=device, dtype=dtype), noise)
    if precision != "fp32":
        denoiser = AutocastDenoiser(denoiser, precision, device)
    if len(sigmas) == 1:  # strength 0: nothing to denoise
        return x
    extra = {"cond": cond, "uncond": uncond}
    # bf16: one autocast region around the whole loop as well as the per-call one of
    # AutocastDenoiser. Autocast keeps its bf16 copies of the weights until its outermost region
    # exits, so they are made once per call instead of once per step (the sampler's own arithmetic
    # is elementwise, which autocast leaves in float32: the same numbers either way).
    with torch.no_grad(), autocast(precision, device):
        return sampler_fn(denoiser, x, sigmas, extra_args=extra, callback=callback,
                          generator=generator, **(sampler_options or {}))


def check_consistency_call(components: DiffusionComponents, sampler: str, steps: int, guidance: float,
                           rescale: float = 0.0) -> None:
    """Refuse, before any work, what a latent consistency model cannot do: another sampler, more
    steps than its teacher grid, a guidance scale it was not distilled on, guidance rescale."""
    consistency = components.consistency
    if consistency is None:
        return
    if sampler != "lcm":
        raise ValueError(f"sampler={sampler!r}: this is a latent consistency model (its UNet embeds the guidance "
                         "scale); sample it with --sampler lcm")
    consistency.check_steps(steps)
    consistency.check_guidance(guidance)
    if rescale:
        raise ValueError("guidance rescale needs classifier-free guidance's two predictions; a latent "
                         "consistency model makes one: leave --rescale at 0")


class AutocastDenoiser:
    """A denoiser run under :func:`~latent_diffusion.hardware.autocast`, its output back in the
    input's dtype, so samplers integrate in float32 whatever the network computes in."""

    def __init__(self, inner: Callable[..., torch.Tensor], precision: str, device: torch.device) -> None:
        self.inner, self.precision, self.device = inner, precision, device

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **extra: Any) -> torch.Tensor:
        """``inner(x, sigma, **extra)`` under autocast, as ``x.dtype``."""
        with autocast(self.precision, self.device):
            out = self.inner(x, sigma, **extra)
        return out.to(x.dtype)


def sampling_sigmas(components: DiffusionComponents, steps: int, sampler: str, spacing: str | None = None,
                    strength: float = 1.0) -> torch.Tensor:
    """The noise levels a call visits: ``steps`` levels of the sampler's default spacing, of which
    image-to-image keeps the last ``int(steps * strength)`` (``len - 1`` is the steps run)."""
    check_positive("steps", steps)
    spacing = spacing or DEFAULT_SPACING.get(sampler, "trailing")
    check_choice("spacing", spacing, SPACINGS)
    original = components.consistency.original_steps if components.consistency is not None else None
    sigmas = get_sigmas(components.schedule, steps, spacing, **({"original_steps": original} if original else {}))
    return sigmas_for_strength(sigmas, strength)
