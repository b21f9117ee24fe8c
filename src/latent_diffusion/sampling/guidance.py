"""Classifier-free guidance (Ho & Salimans 2021) as a wrapper around a denoiser.

``CFGDenoiser(denoiser, scale)`` is itself a denoiser, called as ``D(x, sigma, cond=..., uncond=...)``
where ``cond`` and ``uncond`` are the keyword arguments of the conditional and unconditional model
calls (e.g. ``{"context": ..., "context_mask": ...}``). Samplers pass them through ``extra_args``
and know nothing about guidance. A negative prompt is simply an ``uncond`` made from that prompt.

Both predictions come from one batched call, and are combined as ``uncond + s (cond - uncond)``.
Combining x0 estimates is the same as combining eps estimates, since ``eps = (x - x0) / sigma``
is affine in x0 for a fixed ``x``. Guidance rescale (Lin et al. 2023, sec. 3.4) is applied to the
eps estimates exactly as diffusers' ``rescale_noise_cfg``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from latent_diffusion.sampling.denoiser import append_dims, expand_sigma
from latent_diffusion.validation import check_in_range, check_positive

# Conditions whose token axis (dim 1) may differ between cond and uncond; the shorter one is padded
# with masked-out tokens. Mask convention: True (or 1) marks a real token, as in attention masks of
# Hugging Face tokenizers.
CONTEXT_KEY = "context"
CONTEXT_MASK_KEY = "context_mask"


def rescale_guidance(eps_cfg: torch.Tensor, eps_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Blend the guided eps with a copy rescaled to the conditional eps's per-sample std (Lin et al.)."""
    dims = list(range(1, eps_cfg.ndim))
    std_cond = eps_cond.std(dim=dims, keepdim=True)
    std_cfg = eps_cfg.std(dim=dims, keepdim=True)
    return rescale * eps_cfg * (std_cond / std_cfg) + (1 - rescale) * eps_cfg


def _pad_context(
    context: torch.Tensor, mask: torch.Tensor | None, length: int, mask_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``[batch, tokens, dim]`` context to ``length`` tokens with zeros that the mask hides."""
    batch, tokens = context.shape[:2]
    if mask is None:
        mask = torch.ones(batch, tokens, dtype=mask_dtype, device=context.device)
    if mask.shape != (batch, tokens):
        raise ValueError(f"{CONTEXT_MASK_KEY} must have shape [{batch}, {tokens}], got {tuple(mask.shape)}")
    extra = length - tokens
    context = torch.cat([context, context.new_zeros(batch, extra, *context.shape[2:])], dim=1)
    mask = torch.cat([mask, mask.new_zeros(batch, extra)], dim=1)
    return context, mask


def _match_contexts(cond: dict[str, Any], uncond: dict[str, Any]) -> None:
    """Give both sides masks and contexts of one length (in place) so they can be concatenated."""
    c, u = cond.get(CONTEXT_KEY), uncond.get(CONTEXT_KEY)
    if not isinstance(c, torch.Tensor) or not isinstance(u, torch.Tensor) or c.ndim < 2 or u.ndim < 2:
        return
    masks = [m for m in (cond.get(CONTEXT_MASK_KEY), uncond.get(CONTEXT_MASK_KEY)) if m is not None]
    if c.shape[1] == u.shape[1] and len(masks) != 1:
        return  # nothing to pad, and masks are either on both sides or on neither
    mask_dtype = masks[0].dtype if masks else torch.bool
    length = max(c.shape[1], u.shape[1])
    for d in (cond, uncond):
        d[CONTEXT_KEY], d[CONTEXT_MASK_KEY] = _pad_context(
            d[CONTEXT_KEY], d.get(CONTEXT_MASK_KEY), length, mask_dtype
        )


def concat_conditions(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """One set of model kwargs for the batch ``[cond samples; uncond samples]``.

    Tensors are concatenated along the batch; ``None`` must be ``None`` on both sides; other values
    must be equal. Contexts of different lengths are padded with masked tokens.
    """
    cond, uncond = dict(cond), dict(uncond)
    _match_contexts(cond, uncond)  # may add a context mask to one side
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}"
        )
    merged: dict[str, Any] = {}
    for key in cond:
        c, u = cond[key], uncond[key]
        if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
            if c.shape[1:] != u.shape[1:]:
                raise ValueError(
                    f"cond[{key!r}] shape {tuple(c.shape)} and uncond[{key!r}] shape {tuple(u.shape)} "
                    "differ beyond the batch dimension"
                )
            merged[key] = torch.cat([c, u])
        elif isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor) or c != u:
            raise ValueError(f"cond[{key!r}]={c!r} and uncond[{key!r}]={u!r} cannot be batched together")
        else:
            merged[key] = c
    return merged


class CFGDenoiser:
    """Classifier-free guidance around ``denoiser``: ``D_u + scale (D_c - D_u)``, optionally rescaled.

    ``scale=1`` calls only the conditional denoiser (bit-identical to it); ``rescale`` in ``[0, 1]``
    is diffusers' ``guidance_rescale`` (0 disables it).
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], scale: float, rescale: float = 0.0) -> None:
        check_positive("scale", scale, allow_zero=True)
        check_in_range("rescale", rescale, 0.0, 1.0)
        self.denoiser = denoiser
        self.scale = float(scale)
        self.rescale = float(rescale)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor | float, *, cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
    ) -> torch.Tensor:
        """Guided x0 estimate of ``x`` at noise level ``sigma``."""
        sigma = expand_sigma(sigma, x)
        cond = cond or {}
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        if uncond is None:
            raise ValueError(f"uncond is required for guidance scale {self.scale} (only scale 1 works without it)")
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **concat_conditions(cond, uncond))
        denoised_cond, denoised_uncond = both.chunk(2)
        guided = denoised_uncond + self.scale * (denoised_cond - denoised_uncond)
        if self.rescale == 0.0:
            return guided
        # The std ratio is taken in float32 or wider: in bf16 it would carry ~3 digits.
        wide = torch.promote_types(x.dtype, torch.float32)
        x_w, sigma_w = x.to(wide), append_dims(sigma.to(wide), x.ndim)
        eps_cond = (x_w - denoised_cond.to(wide)) / sigma_w
        eps_cfg = (x_w - guided.to(wide)) / sigma_w
        return (x_w - sigma_w * rescale_guidance(eps_cfg, eps_cond, self.rescale)).to(x.dtype)


__all__ = ["CFGDenoiser", "CONTEXT_KEY", "CONTEXT_MASK_KEY", "concat_conditions", "rescale_guidance"]
