"""The forward (noising) process of a discrete-time diffusion model and its noise schedule.

DDPM (Ho et al. 2020) corrupts data over ``T`` steps, ``q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I)``
with ``a_t = alpha_bar_t = prod_{s<=t} (1 - beta_s)``. Samplers in :mod:`latent_diffusion.sampling`
work instead in the "variance exploding" view of k-diffusion / Karras et al. 2022,
``x = x_0 + sigma * eps`` with ``sigma_t = sqrt((1 - a_t) / a_t)``: dividing a DDPM sample by
``sqrt(a_t)`` turns one into the other. :class:`NoiseSchedule` holds both views and maps between a
continuous ``sigma`` and a fractional timestep by interpolating ``log sigma``, as k-diffusion does.

Schedule names, because the field's names are ambiguous:

- ``"linear"``: betas linear in beta from ``beta_start`` to ``beta_end`` (DDPM; diffusers ``linear``).
- ``"linear_in_sqrt_beta"``: betas linear in sqrt(beta), then squared. This is the schedule of
  LDM and Stable Diffusion, which the original LDM code calls ``linear`` and diffusers calls
  ``scaled_linear``. Neither of those two names is accepted here for it.
- ``"cosine"``: Nichol & Dhariwal 2021, ``alpha_bar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)`` with
  ``s = 0.008`` and betas clipped at 0.999 (diffusers ``squaredcos_cap_v2``); ignores beta_start/end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from latent_diffusion.config import Config
from latent_diffusion.diffusion.parameterization import PREDICTIONS
from latent_diffusion.validation import check_choice, check_positive

SCHEDULES = ("linear", "linear_in_sqrt_beta", "cosine")
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999

# Names other codebases use, mapped to ours, so a wrong guess gets a precise hint instead of a
# silently different schedule.
_FOREIGN_NAMES = {
    "scaled_linear": "linear_in_sqrt_beta",
    "squaredcos_cap_v2": "cosine",
}


@dataclass
class DiffusionConfig(Config):
    """Settings of the diffusion process: schedule, prediction target and loss weighting.

    ``schedule="linear_in_sqrt_beta"`` with betas 0.00085 to 0.012 over 1,000 steps is the LDM /
    Stable Diffusion schedule (see the module docstring for the naming). ``prediction`` is what the
    network outputs: the noise ``eps``, the clean data ``x0``, or ``v = sqrt(a) eps - sqrt(1-a) x0``
    (Salimans & Ho 2022). ``min_snr_gamma`` enables Min-SNR-gamma loss weighting (Hang et al. 2023).
    """

    num_timesteps: int = 1000
    schedule: Literal["linear", "linear_in_sqrt_beta", "cosine"] = "linear_in_sqrt_beta"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction: Literal["eps", "x0", "v"] = "eps"
    min_snr_gamma: float | None = None

    def __post_init__(self) -> None:
        check_schedule_name(self.schedule)
        check_choice("prediction", self.prediction, PREDICTIONS)
        if self.num_timesteps < 2:
            # sigma_to_t interpolates between neighbouring timesteps, so it needs at least two.
            raise ValueError(f"num_timesteps={self.num_timesteps!r} must be >= 2")
        if self.schedule != "cosine":
            if not 0.0 < self.beta_start < self.beta_end < 1.0:
                raise ValueError(
                    f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r}: "
                    "need 0 < beta_start < beta_end < 1"
                )
        if self.min_snr_gamma is not None:
            check_positive("min_snr_gamma", self.min_snr_gamma)


def check_schedule_name(name: str) -> None:
    """Raise a ValueError for an unknown schedule name, with a hint for other codebases' names."""
    if name in SCHEDULES:
        return
    hint = ""
    if name in _FOREIGN_NAMES:
        hint = f" (diffusers' {name!r} is called {_FOREIGN_NAMES[name]!r} here)"
    raise ValueError(f"schedule={name!r} is not supported; choose one of {list(SCHEDULES)}{hint}")


def make_betas(
    schedule: str, num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """The ``[num_timesteps]`` float64 betas of a named schedule (see the module docstring)."""
    check_schedule_name(schedule)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if schedule == "linear_in_sqrt_beta":
        sqrt_betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64)
        return sqrt_betas**2
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2
    # beta_t = 1 - alpha_bar(t+1)/alpha_bar(t); clipping keeps the last steps from being pure noise
    # jumps (beta = 1 would make alpha_bar exactly 0 and sigma infinite).
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=COSINE_MAX_BETA)


def _float_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the tables keep their full precision.
    return torch.float32 if device.type == "mps" else torch.float64


class NoiseSchedule:
    """Tables of a discrete diffusion schedule (float64, CPU) and the maps between its views.

    ``betas``, ``alphas_cumprod`` (``a_t``), ``sigmas`` (``sqrt((1 - a_t) / a_t)``, increasing in
    ``t``) and ``log_sigmas`` are ``[T]`` tensors. Methods take tensors on any device and return
    results there, in float64 (float32 on MPS).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be a 1-D tensor with >= 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must all lie in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> NoiseSchedule:
        """Build the schedule a :class:`DiffusionConfig` describes."""
        return cls(make_betas(config.schedule, config.num_timesteps, config.beta_start, config.beta_end))

    @property
    def num_timesteps(self) -> int:
        """``T``, the number of discrete training timesteps."""
        return self.betas.numel()

    @property
    def sigma_min(self) -> float:
        """The smallest noise level, ``sigma_0``."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest noise level, ``sigma_{T-1}``."""
        return float(self.sigmas[-1])

    def _lookup(self, table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``table[t]`` for integer timesteps ``t``, on ``t``'s device."""
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got {t!r}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps - 1}], got min {int(t.min())}, "
                f"max {int(t.max())}"
            )
        return table.to(t.device, _float_dtype(t.device))[t]

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """``a_t = alpha_bar_t`` for integer timesteps ``t``."""
        return self._lookup(self.alphas_cumprod, t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t = sqrt((1 - a_t) / a_t)`` for integer timesteps ``t``."""
        return self._lookup(self.sigmas, t)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``a_t / (1 - a_t) = 1 / sigma_t^2`` for integer timesteps ``t``."""
        a = self.alpha_bar(t)
        return a / (1 - a)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` (DDPM's forward process), in x0's dtype.

        ``t`` holds one integer timestep per sample (shape ``[batch]``).
        """
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must have shape [{x0.shape[0]}] (one timestep per sample), got {tuple(t.shape)}")
        a = self.alpha_bar(t).view(-1, *([1] * (x0.ndim - 1)))
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each noise level, by linear interpolation in ``log sigma``.

        As in k-diffusion: integer timesteps map back exactly, sigmas between two table entries map
        between their timesteps, and sigmas outside the table are clamped to ``[0, T-1]``.
        """
        sigma = torch.as_tensor(sigma)
        dtype = _float_dtype(sigma.device)
        log_sigmas = self.log_sigmas.to(sigma.device, dtype)
        log_sigma = sigma.to(dtype).clamp(min=1e-10).log()
        # low = index of the largest table entry <= sigma (clamped so that low + 1 exists); the
        # table increases with t, so a binary search finds it in O(log T) per sigma.
        flat = log_sigma.reshape(-1)
        low = (torch.searchsorted(log_sigmas, flat, right=True) - 1).clamp(0, self.num_timesteps - 2)
        high = low + 1
        w = ((log_sigmas[low] - flat) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level of (possibly fractional) timesteps ``t`` in ``[0, T-1]``, interpolating ``log sigma``."""
        t = torch.as_tensor(t)
        dtype = _float_dtype(t.device)
        t = t.to(dtype)
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > self.num_timesteps - 1):
            raise ValueError(f"t must lie in [0, {self.num_timesteps - 1}], got {t.min()}..{t.max()}")
        log_sigmas = self.log_sigmas.to(t.device, dtype)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


__all__ = [
    "COSINE_MAX_BETA",
    "COSINE_OFFSET",
    "DiffusionConfig",
    "NoiseSchedule",
    "SCHEDULES",
    "check_schedule_name",
    "make_betas",
]
