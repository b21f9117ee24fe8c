"""Mask-guided sampling (inpainting with any text-to-image model) as a wrapper around a denoiser.

At every step the region to keep is replaced by the original latent noised to the current level,
as latent-diffusion's DDIM sampler does with ``mask`` and ``x0`` (Rombach et al. 2022, Sec. 4.5;
also RePaint without resampling and diffusers' legacy inpainting pipeline). Written as a denoiser
``D'(x, sigma)``, it works with every sampler unchanged:

* the network sees ``keep * (x0 + sigma * noise) + (1 - keep) * x``: the known region exactly as
  the forward process would have it at ``sigma``, the hole as the sampler made it;
* the estimate returned is ``x0`` on the known region. Every sampler here moves ``x`` towards
  its denoised estimates, so the known region of the sampler's own ``x`` follows
  ``x0 + sigma * noise`` for the deterministic samplers, and every sampler ends (``sigma = 0``)
  on ``x0`` there: the known latent comes back exactly.

``keep`` is 1 where the original is kept and 0 in the hole, at latent resolution; ``noise`` is the
fixed noise of the known region (the one the run started from), as in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.sampling.denoiser import append_dims, expand_sigma


class MaskedDenoiser:
    """``denoiser`` that keeps the region ``keep == 1`` of ``x0`` (see the module docstring)."""

    def __init__(self, denoiser: Callable[..., torch.Tensor], x0: torch.Tensor, keep: torch.Tensor,
                 noise: torch.Tensor) -> None:
        if keep.ndim != x0.ndim or keep.shape[0] not in (1, x0.shape[0]) or keep.shape[1] != 1 \
                or keep.shape[2:] != x0.shape[2:]:
            raise ValueError(f"keep mask of shape {tuple(keep.shape)} does not fit latents {tuple(x0.shape)}: "
                             "it must be [B or 1, 1, h, w] at the latent resolution")
        if noise.shape != x0.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} differs from x0 {tuple(x0.shape)}")
        if bool(((keep != 0) & (keep != 1)).any()):
            raise ValueError("keep mask must hold only 0 (repaint) and 1 (keep)")
        self.denoiser = denoiser
        self.x0 = x0
        self.keep = keep.to(x0.dtype)
        self.noise = noise

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **extra: Any) -> torch.Tensor:
        """x0 estimate of ``x`` at ``sigma`` with the known region taken from the original."""
        sigma = expand_sigma(sigma, x)
        known = self.x0 + append_dims(sigma.to(x.dtype), x.ndim) * self.noise
        x_in = self.keep * known + (1 - self.keep) * x
        denoised = self.denoiser(x_in, sigma, **extra)
        return self.keep * self.x0 + (1 - self.keep) * denoised


def latent_keep_mask(hole: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel hole mask ``[B, 1, H, W]`` (1 = repaint) -> latent keep mask ``[B, 1, H/f, W/f]``.

    A latent cell is repainted when any of its pixels is in the hole (max-pooling): a cell that
    straddles the border holds information about the hole, and keeping it would leak the old
    content back into the fill. The decoded pixels outside the hole are restored afterwards.
    """
    if factor == 1:
        return 1 - hole
    return 1 - torch.nn.functional.max_pool2d(hole, kernel_size=factor, stride=factor)


__all__ = ["MaskedDenoiser", "latent_keep_mask"]
