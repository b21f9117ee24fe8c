"""Turn a discrete-time network into a denoiser ``D(x, sigma)`` that every sampler can use.

Samplers work in k-diffusion's "variance exploding" coordinates, ``x = x0 + sigma * eps``, and only
need the denoiser ``D(x, sigma) ~ E[x0 | x]``. A DDPM-style network instead sees
``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` at an integer timestep ``t``. Since
``a = 1 / (1 + sigma^2)``, ``x_t = c_in * x`` with ``c_in = 1 / sqrt(sigma^2 + 1)``; the timestep is
the (fractional) ``t`` whose noise level is ``sigma``. The network's output, whichever of eps, x0 or
v it predicts, is converted to x0 exactly (:mod:`latent_diffusion.diffusion.parameterization`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.diffusion import parameterization
from latent_diffusion.diffusion.consistency import LCM_SIGMA_DATA, LCM_TIMESTEP_SCALING, boundary_scalings
from latent_diffusion.diffusion.schedule import NoiseSchedule
from latent_diffusion.validation import check_choice


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """One noise level per sample (shape ``[batch]``) from a scalar or ``[batch]`` sigma."""
    sigma = torch.as_tensor(sigma, device=x.device)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    return sigma


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """View a ``[batch]`` tensor as ``[batch, 1, ..., 1]`` with ``ndim`` dims, to scale a batch."""
    return v.view(-1, *([1] * (ndim - 1)))


class DiscreteDenoiser:
    """``D(x, sigma, **cond)``: the x0 estimate of a discrete-time ``model(x_t, t, **cond)``.

    ``prediction`` says what the model outputs ("eps", "x0" or "v"). With ``quantize=True`` the
    timestep given to the model is rounded to the nearest integer (for networks that should only
    ever see training timesteps); by default it is fractional, as k-diffusion does.
    The result has ``x``'s dtype; the scalings are computed in float32 or wider.
    """

    def __init__(
        self, model: Callable[..., torch.Tensor], schedule: NoiseSchedule, prediction: str,
        *, quantize: bool = False,
    ) -> None:
        check_choice("prediction", prediction, parameterization.PREDICTIONS)
        self.model = model
        self.schedule = schedule
        self.prediction = prediction
        self.quantize = quantize

    @property
    def sigma_min(self) -> float:
        """Smallest noise level the model was trained on."""
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        """Largest noise level the model was trained on."""
        return self.schedule.sigma_max

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's timestep for each noise level (fractional unless ``quantize``)."""
        t = self.schedule.sigma_to_t(sigma)
        return t.round() if self.quantize else t

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The denoised estimate of ``x`` at noise level ``sigma`` (scalar or ``[batch]``)."""
        sigma = expand_sigma(sigma, x)
        wide = torch.promote_types(x.dtype, torch.float32)
        sigma_w = append_dims(sigma.to(wide), x.ndim)
        c_in = (sigma_w**2 + 1).rsqrt()
        x_t = x.to(wide) * c_in
        t = self.timestep(sigma).to(wide)
        output = self.model(x_t.to(x.dtype), t, **cond)
        if output.shape != x.shape:
            raise ValueError(f"model output shape {tuple(output.shape)} must equal input shape {tuple(x.shape)}")
        alpha_bar = c_in**2  # a = 1 / (1 + sigma^2)
        x0 = parameterization.to_x0(output.to(wide), x_t, alpha_bar, self.prediction)
        return x0.to(x.dtype)

    def eps(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The noise estimate ``(x - D(x, sigma)) / sigma`` (for ``sigma > 0``)."""
        sigma = expand_sigma(sigma, x)
        denoised = self(x, sigma, **cond)
        return (x - denoised) / append_dims(sigma.to(x.dtype), x.ndim)


class ConsistencyDenoiser:
    """A consistency model's output ``f(x, t) = c_skip(t) x_t + c_out(t) D(x, sigma)`` (LCM's
    boundary condition, Song et al. 2023 / Luo et al. 2023;
    :func:`~latent_diffusion.diffusion.consistency.boundary_scalings`): ``f`` is the identity at
    ``t = 0`` and the inner x0 estimate elsewhere. ``x_t`` is the sample in the network's
    coordinates, ``x / sqrt(1 + sigma^2)``; ``t`` the (fractional) timestep of ``sigma`` on
    ``inner.schedule``.
    """

    def __init__(self, inner: DiscreteDenoiser, timestep_scaling: float = LCM_TIMESTEP_SCALING,
                 sigma_data: float = LCM_SIGMA_DATA) -> None:
        self.inner, self.timestep_scaling, self.sigma_data = inner, timestep_scaling, sigma_data

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, **cond: Any) -> torch.Tensor:
        """The consistency output at noise level ``sigma`` (scalar or ``[batch]``), in ``x``'s dtype."""
        sigma = expand_sigma(sigma, x)
        wide = torch.promote_types(x.dtype, torch.float32)
        c_skip, c_out = boundary_scalings(self.inner.timestep(sigma).to(wide), self.sigma_data,
                                          self.timestep_scaling)
        x_t = x.to(wide) * append_dims((sigma.to(wide) ** 2 + 1).rsqrt(), x.ndim)
        denoised = self.inner(x, sigma, **cond).to(wide)
        return (append_dims(c_skip, x.ndim) * x_t + append_dims(c_out, x.ndim) * denoised).to(x.dtype)


__all__ = ["ConsistencyDenoiser", "DiscreteDenoiser", "append_dims", "expand_sigma"]
