"""Samplers: pure functions that integrate the reverse process over a denoiser ``D(x, sigma)``.

All share one signature (k-diffusion's)::

    sample_<name>(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, **options)

``x`` is the starting sample at ``sigmas[0]`` in "variance exploding" coordinates
``x = x0 + sigma * eps`` (see :func:`~latent_diffusion.sampling.discretization.initial_latent`),
``sigmas`` decreases to (usually) 0, ``extra_args`` are passed to every denoiser call (conditions,
or ``cond``/``uncond`` for :class:`~latent_diffusion.sampling.guidance.CFGDenoiser`), ``callback``
gets ``{"i", "x", "sigma", "sigma_next", "denoised"}`` once per step, and every random draw comes
from ``generator`` (drawn on its device, in ``x``'s dtype, as diffusers' ``randn_tensor`` does).

In these coordinates several classic samplers coincide, which the tests check: DDIM with ``eta=0``
is Euler's method on the probability-flow ODE (Karras et al. 2022, sec. 3), and DDIM with ``eta``
is the same update as Euler-ancestral with ``eta``; ``eta=1`` is DDPM's ancestral sampler. Each is
still written in its own paper's form, so each can be read against its paper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.validation import check_in_range

Denoiser = Callable[..., torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def _check_sigmas(sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Validate the noise levels and put them next to ``x`` in float32 or wider."""
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least 2 entries (start and end noise levels)")
    if bool((sigmas[1:] >= sigmas[:-1]).any()) or float(sigmas[-1]) < 0:
        raise ValueError(f"sigmas must be strictly decreasing and non-negative, got {sigmas.tolist()}")
    return sigmas.to(x.device, torch.promote_types(x.dtype, torch.float32))


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict | None) -> torch.Tensor:
    return denoiser(x, sigma.expand(x.shape[0]), **(extra_args or {}))


def _report(
    callback: Callback | None, i: int, x: torch.Tensor, sigmas: torch.Tensor, denoised: torch.Tensor
) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "denoised": denoised})


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Probability-flow ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_down, sigma_up)`` of an ancestral step from ``sigma`` to ``sigma_next``.

    ``sigma_up`` is ``eta`` times the DDPM posterior standard deviation
    ``sigma_next * sqrt(sigma^2 - sigma_next^2) / sigma``; the deterministic part goes to
    ``sigma_down = sqrt(sigma_next^2 - sigma_up^2)``, so fresh noise brings the level back to
    ``sigma_next``.
    """
    sigma_up = torch.minimum(sigma_next, eta * sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma)
    sigma_down = (sigma_next**2 - sigma_up**2).clamp(min=0).sqrt()
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without churn)."""
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        denoised = _denoise(denoiser, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Alg. 1); an Euler step into ``sigma = 0``."""
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _report(callback, i, x, sigmas, denoised)
        d = to_d(x, sigma, denoised)
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:  # the correction would evaluate D at sigma = 0, where d is undefined
            x = x_euler
            continue
        d_next = to_d(x_euler, sigma_next, _denoise(denoiser, x_euler, sigma_next, extra_args))
        x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, generator: torch.Generator | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in sigma coordinates; ``eta=0`` is deterministic.

    With ``eps = (x - x0) / sigma`` the update ``x' = x0 + sqrt(sigma'^2 - s^2) eps + s z`` has
    ``s = eta * sigma' sqrt(sigma^2 - sigma'^2) / sigma``: DDIM's ``sigma_t(eta)`` divided by
    ``sqrt(alpha_bar')``. ``eta=1`` gives DDPM's posterior variance.
    """
    check_in_range("eta", eta, 0.0, 1.0)
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _report(callback, i, x, sigmas, denoised)
        eps = to_d(x, sigma, denoised)
        s = eta * sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma
        x = denoised + (sigma_next**2 - s**2).clamp(min=0).sqrt() * eps
        if eta > 0 and sigma_next > 0:
            x = x + s * _noise(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's ancestral sampler (Ho et al. 2020): draw from the posterior ``q(x' | x, x0 = D(x))``.

    In sigma coordinates the forward process adds independent noise of variance
    ``sigma^2 - sigma'^2`` between levels, so the posterior is a Brownian bridge: mean
    ``x0 + (sigma'^2 / sigma^2)(x - x0)`` and variance ``sigma'^2 (sigma^2 - sigma'^2) / sigma^2``
    (DDPM's beta-tilde, "fixed_small", divided by ``alpha_bar'``).
    """
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _report(callback, i, x, sigmas, denoised)
        ratio = sigma_next**2 / sigma**2
        x = denoised + ratio * (x - denoised)
        if sigma_next > 0:
            x = x + (ratio * (sigma**2 - sigma_next**2)).sqrt() * _noise(x, generator)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: dict | None = None, callback: Callback | None = None,
                           generator: torch.Generator | None = None, eta: float = 1.0) -> torch.Tensor:
    """Euler-ancestral (k-diffusion): an Euler step down to ``sigma_down``, then noise ``sigma_up``."""
    check_in_range("eta", eta, 0.0, 1.0)
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _report(callback, i, x, sigmas, denoised)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0 and eta > 0:
            x = x + sigma_up * _noise(x, generator)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                    callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), as in k-diffusion.

    In ``lambda = -log sigma`` the data-prediction ODE is solved exactly for a denoised estimate
    that is linear in ``lambda``, extrapolated from this and the previous step; the first step and
    the step into ``sigma = 0`` are first order (DDIM).
    """
    sigmas = _check_sigmas(sigmas, x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(denoiser, x, sigma, extra_args)
        _report(callback, i, x, sigmas, denoised)
        if sigma_next == 0:
            x = denoised
            break
        h = sigma.log() - sigma_next.log()  # lambda_next - lambda
        if old_denoised is None:
            estimate = denoised
        else:
            r = (sigmas[i - 1].log() - sigma.log()) / h  # h_last / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * estimate
        old_denoised = denoised
    return x


def sample_lcm(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
               callback: Callback | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM, Luo et al. 2023): each step
    jumps to the clean estimate ``D(x, sigma)`` and, unless it is the last, noises it afresh to the
    next level. For a consistency model (``D`` with its boundary condition,
    :class:`~latent_diffusion.sampling.denoiser.ConsistencyDenoiser`) over the ``"lcm"`` spacing,
    this is diffusers' ``LCMScheduler`` step for step."""
    sigmas = _check_sigmas(sigmas, x)
    for i in range(len(sigmas) - 1):
        denoised = _denoise(denoiser, x, sigmas[i], extra_args)
        _report(callback, i, x, sigmas, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * _noise(x, generator)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "lcm": sample_lcm,
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function registered as ``name`` (see :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


__all__ = [
    "SAMPLERS",
    "ancestral_step",
    "get_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "to_d",
]
