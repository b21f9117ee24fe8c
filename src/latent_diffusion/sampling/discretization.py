"""Which noise levels a sampler visits: the discretization of the reverse process.

A sampler runs over a decreasing sequence ``sigmas[0] > ... > sigmas[steps - 1] > sigmas[steps] = 0``
(k-diffusion convention). The spacings below choose the ``steps`` training timesteps (or noise
levels) to visit:

- ``"leading"``: ``t_i = i * (T // steps) + steps_offset``, the DDIM paper's and Stable
  Diffusion's choice (SD uses ``steps_offset=1``, like LDM's own DDIM sampler, our default).
- ``"trailing"``: ``round(T - i * T / steps) - 1``: always starts at the last timestep ``T - 1``
  (Lin et al. 2023, Table 2), so the first step sees the noisiest level.
- ``"linspace"``: ``linspace(0, T - 1, steps)``, possibly fractional timesteps (their sigmas are
  interpolated in log sigma). diffusers' Euler schedulers use these timesteps as they are; its
  DDIM/DDPM schedulers round them to integers first.
- ``"karras"``: Karras et al. 2022 (EDM), ``sigma_i = (smax^(1/rho) + i/(steps-1) (smin^(1/rho) -
  smax^(1/rho)))^rho`` between the schedule's smallest and largest sigma, ``rho = 7``.
- ``"lcm"``: the timesteps a latent consistency model was distilled on (Luo et al. 2023): the
  skipping-step grid ``k - 1, 2k - 1, ..., T - 1`` with ``k = T // original_steps`` (50 in LCM), of
  which ``steps`` evenly spaced by index are visited, from ``T - 1`` down.

The timesteps of the first three match diffusers' ``timestep_spacing`` options exactly, and
``"lcm"`` matches diffusers' ``LCMScheduler``.
"""

from __future__ import annotations

import numpy as np
import torch

from latent_diffusion.diffusion.schedule import NoiseSchedule
from latent_diffusion.validation import check_choice, check_in_range, check_positive

SPACINGS = ("leading", "trailing", "linspace", "karras", "lcm")
LCM_ORIGINAL_STEPS = 50  # the distillation grid of LCM (and of diffusers' LCMScheduler default)


def _check_steps(steps: int, schedule: NoiseSchedule) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if steps > schedule.num_timesteps:
        raise ValueError(
            f"steps={steps} must not exceed the schedule's {schedule.num_timesteps} training timesteps"
        )


def get_timesteps(
    schedule: NoiseSchedule, steps: int, spacing: str = "leading", *, steps_offset: int = 1,
    original_steps: int = LCM_ORIGINAL_STEPS,
) -> torch.Tensor:
    """The ``[steps]`` decreasing (float64) training timesteps a ``spacing`` visits.

    ``"karras"`` gives the fractional timesteps of its sigmas. ``steps_offset`` only shifts
    ``"leading"``; ``original_steps`` is ``"lcm"``'s distillation grid.
    """
    check_choice("spacing", spacing, SPACINGS)
    _check_steps(steps, schedule)
    T = schedule.num_timesteps
    if spacing == "karras":
        return schedule.sigma_to_t(karras_sigmas(schedule.sigma_min, schedule.sigma_max, steps))
    if spacing == "lcm":
        return lcm_timesteps(T, steps, original_steps)
    # numpy on purpose: the same float operations as diffusers, so the rounding agrees exactly.
    if spacing == "leading":
        timesteps = (np.arange(steps) * (T // steps)).round()[::-1] + steps_offset
        if timesteps[0] > T - 1 or timesteps[-1] < 0:
            raise ValueError(
                f"steps_offset={steps_offset} with steps={steps} gives timesteps outside [0, {T - 1}]"
            )
    elif spacing == "trailing":
        timesteps = np.round(np.arange(T, 0, -T / steps)) - 1
    else:
        timesteps = np.linspace(0, T - 1, steps, dtype=np.float64)[::-1]
    return torch.tensor(timesteps.copy(), dtype=torch.float64)


def lcm_timesteps(num_timesteps: int, steps: int, original_steps: int = LCM_ORIGINAL_STEPS) -> torch.Tensor:
    """``steps`` timesteps of the LCM skipping-step grid of ``original_steps`` (see the module docstring)."""
    if not 1 <= original_steps <= num_timesteps:
        raise ValueError(f"original_steps={original_steps} must lie in [1, {num_timesteps}]")
    if steps > original_steps:
        raise ValueError(f"steps={steps}: a consistency model distilled on {original_steps} timesteps samples in "
                         f"at most {original_steps} steps (2-8 is what it is for)")
    k = num_timesteps // original_steps
    grid = (np.arange(1, original_steps + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, original_steps, num=steps, endpoint=False)).astype(np.int64)
    return torch.tensor(grid[indices].copy(), dtype=torch.float64)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 noise levels (``[steps]``, float64, decreasing, without the final 0)."""
    check_positive("rho", rho)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def get_sigmas(
    schedule: NoiseSchedule, steps: int, spacing: str = "leading", *, rho: float = 7.0,
    steps_offset: int = 1, original_steps: int = LCM_ORIGINAL_STEPS,
) -> torch.Tensor:
    """The ``[steps + 1]`` decreasing float64 noise levels a sampler visits, ending with 0."""
    check_choice("spacing", spacing, SPACINGS)
    _check_steps(steps, schedule)
    if spacing == "karras":
        sigmas = karras_sigmas(schedule.sigma_min, schedule.sigma_max, steps, rho)
    else:
        sigmas = schedule.t_to_sigma(get_timesteps(schedule, steps, spacing, steps_offset=steps_offset,
                                                   original_steps=original_steps))
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def initial_latent(noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Scale unit Gaussian ``noise`` to the first noise level: ``noise * sqrt(1 + sigmas[0]^2)``.

    For data of unit variance, ``x = x0 + sigma * eps`` has variance ``1 + sigma^2``; this is
    diffusers' ``init_noise_sigma``. (Text-to-image starts here; image-to-image instead noises an
    encoded image to a smaller sigma.)
    """
    scale = float((1 + sigmas[0].double() ** 2).sqrt())
    return noise * scale


def sigmas_for_strength(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of ``sigmas`` that image-to-image runs at ``strength`` in [0, 1] (SDEdit).

    Of ``steps = len(sigmas) - 1`` steps, the last ``int(steps * strength)`` are kept, exactly as
    diffusers' img2img pipelines count them, so the same strength visits the same noise levels.
    Strength 0 leaves ``[0.]``: no step, the image comes back as encoded; strength 1 starts from
    the first level (almost pure noise).
    """
    check_in_range("strength", strength, 0.0, 1.0)
    steps = len(sigmas) - 1
    kept = min(int(steps * strength), steps)
    return sigmas[steps - kept:]


def noised_latent(latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``latent + sigma * noise``: an encoded image at noise level ``sigma`` (where img2img starts).

    In these coordinates this is diffusers' ``add_noise`` divided by ``sqrt(alpha_bar)``.
    """
    return latent + float(sigma) * noise


__all__ = ["LCM_ORIGINAL_STEPS", "SPACINGS", "lcm_timesteps", "get_sigmas", "get_timesteps", "initial_latent", "karras_sigmas", "noised_latent",
           "sigmas_for_strength"]
