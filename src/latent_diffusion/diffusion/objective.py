"""The training objective of the diffusion model (LDM eq. 2, DDPM's "simple" loss).

Draw ``t`` uniformly from ``{0, ..., T-1}`` and ``eps ~ N(0, I)``, noise the data to
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` and regress the network's output onto its
parameterization's target (``eps``, ``x0`` or ``v``) with a mean squared error.

Min-SNR-gamma (Hang et al. 2023) re-weights each sample so that the implied x0-space loss weight is
``min(SNR_t, gamma)``: this stops the many easy low-noise timesteps from dominating training.
Because an eps-loss equals SNR times an x0-loss and a v-loss equals (SNR + 1) times an x0-loss, the
weight on the loss as computed is ``min(snr, g) / snr`` for eps, ``min(snr, g)`` for x0 and
``min(snr, g) / (snr + 1)`` for v.

Condition dropout for classifier-free guidance is the conditioner's job, not this module's: ``cond``
arrives here already dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from latent_diffusion.diffusion import parameterization
from latent_diffusion.diffusion.schedule import NoiseSchedule
from latent_diffusion.validation import check_choice, check_positive

REDUCTIONS = ("mean", "none")


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma weight for a loss computed in ``prediction`` space."""
    check_choice("prediction", prediction, parameterization.PREDICTIONS)
    check_positive("min_snr_gamma", gamma)
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    return clipped / (snr + 1)


def _device_of(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    # Draw where the generator lives (a CPU generator keeps runs reproducible across devices),
    # then move the draw next to the data.
    return generator.device if generator is not None else fallback


def sample_timesteps(
    batch: int, schedule: NoiseSchedule, *, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``batch`` timesteps drawn uniformly from ``{0, ..., T-1}`` (int64, on ``device``)."""
    device = torch.device(device)
    t = torch.randint(
        0, schedule.num_timesteps, (batch,), generator=generator, device=_device_of(generator, device)
    )
    return t.to(device)


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    schedule: NoiseSchedule,
    prediction: str,
    *,
    cond: Mapping[str, Any] | None = None,
    min_snr_gamma: float | None = None,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The denoising loss of ``model(x_t, t, **cond)`` on clean data ``x0``.

    ``timesteps`` (``[batch]`` int) and ``noise`` (shaped like ``x0``) are drawn with ``generator``
    when not given: timesteps first, then noise. ``reduction="mean"`` returns the scalar mean loss,
    ``"none"`` the ``[batch]`` per-sample losses (useful to log the loss per timestep). The squared
    error is taken in float32 or wider, so bf16 autocast does not round the loss.
    """
    check_choice("prediction", prediction, parameterization.PREDICTIONS)
    check_choice("reduction", reduction, REDUCTIONS)
    if x0.ndim < 2:
        raise ValueError(f"x0 must be batched (shape [batch, ...]), got shape {tuple(x0.shape)}")
    batch = x0.shape[0]
    if timesteps is None:
        timesteps = sample_timesteps(batch, schedule, generator=generator, device=x0.device)
    elif timesteps.shape != (batch,):
        raise ValueError(f"timesteps must have shape [{batch}], got {tuple(timesteps.shape)}")
    if noise is None:
        noise = torch.randn(
            x0.shape, generator=generator, device=_device_of(generator, x0.device), dtype=x0.dtype
        ).to(x0.device)
    x_t = schedule.q_sample(x0, timesteps, noise)
    output = model(x_t, timesteps, **(cond or {}))
    if output.shape != x0.shape:
        raise ValueError(f"model output shape {tuple(output.shape)} must equal x0 shape {tuple(x0.shape)}")
    alpha_bar = schedule.alpha_bar(timesteps)
    wide = torch.promote_types(x0.dtype, torch.float32)
    goal = parameterization.target(prediction, x0.to(wide), noise.to(wide), alpha_bar)
    losses = (output.to(wide) - goal.to(wide)).square().flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        snr = schedule.snr(timesteps)
        losses = losses * min_snr_weight(snr, prediction, min_snr_gamma).to(wide)
    return losses.mean() if reduction == "mean" else losses


__all__ = ["REDUCTIONS", "diffusion_loss", "min_snr_weight", "sample_timesteps"]
