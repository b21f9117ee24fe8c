"""Latent consistency models (Luo et al. 2023): the boundary condition and the guidance input.

A consistency model ``f(x_t, t)`` maps any point of a probability-flow trajectory to its origin.
LCM parameterizes it around an eps/x0/v network as ``f = c_skip(t) x_t + c_out(t) x0_theta(x_t, t)``
with ``c_skip(0) = 1, c_out(0) = 0``, so ``f`` is the identity at ``t = 0`` by construction, and
distils the classifier-free-guided teacher into it: the guidance scale is an input of the network
(a sinusoidal embedding added to its timestep features), so one network call replaces the two of
guidance, and 2-8 steps replace 25.

:class:`ConsistencyConfig` is what a distilled model folder says about itself (``consistency.json``):
the boundary scalings' constants, the teacher grid it was distilled on, the guidance scales it saw
and the steps and guidance it samples with by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latent_diffusion.config import Config
from latent_diffusion.unet.blocks import guidance_embedding
from latent_diffusion.validation import check_positive

LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def boundary_scalings(timesteps: torch.Tensor, sigma_data: float = LCM_SIGMA_DATA,
                      timestep_scaling: float = LCM_TIMESTEP_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` at (fractional) ``timesteps``: ``c_skip = s^2 / ((k t)^2 + s^2)``,
    ``c_out = k t / sqrt((k t)^2 + s^2)`` with ``s = sigma_data`` and ``k = timestep_scaling`` (LCM's
    values 0.5 and 10: by ``t = 259``, the last of 4 LCM steps, ``c_skip`` is ~4e-8)."""
    scaled = timesteps * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


@dataclass
class ConsistencyConfig(Config):
    """How a guidance-embedded latent consistency model samples; saved as ``consistency.json``.

    ``original_steps``: the teacher grid of the distillation (LCM: 50 of 1,000 timesteps), which
    the ``lcm`` spacing draws its timesteps from. ``guidance_min``/``guidance_max``: the range of
    classifier-free guidance scales (1 = none) the student was distilled on; it is given
    ``scale - 1``, as LCM's ``w``. ``steps``/``guidance``: what ``ldm generate`` uses unless told.
    """

    embedding_dim: int = 256
    original_steps: int = 50
    guidance_min: float = 2.0
    guidance_max: float = 8.0
    steps: int = 4
    guidance: float = 5.0
    sigma_data: float = LCM_SIGMA_DATA
    timestep_scaling: float = LCM_TIMESTEP_SCALING

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "original_steps", "steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"consistency {name}={value!r} must be a positive integer")
        if self.embedding_dim < 4:
            raise ValueError(f"consistency embedding_dim={self.embedding_dim} must be >= 4")
        for name in ("sigma_data", "timestep_scaling"):
            check_positive(f"consistency {name}", getattr(self, name))
        if not 1.0 <= self.guidance_min <= self.guidance_max < math.inf:
            raise ValueError(f"consistency guidance range [{self.guidance_min}, {self.guidance_max}] must be "
                             "finite with 1 <= guidance_min <= guidance_max (1 = no guidance)")
        if self.steps > self.original_steps:
            raise ValueError(f"consistency steps={self.steps} exceed original_steps={self.original_steps}")
        self.check_guidance(self.guidance)

    def check_guidance(self, guidance: float) -> None:
        """Refuse a guidance scale outside the distilled range, saying which range works."""
        if not self.guidance_min <= guidance <= self.guidance_max:
            raise ValueError(f"guidance={guidance:g} is outside the range this consistency model was distilled on "
                             f"([{self.guidance_min:g}, {self.guidance_max:g}]); pass --guidance within it")

    def check_steps(self, steps: int) -> None:
        """Refuse more steps than the teacher grid has (the ``lcm`` spacing could not place them)."""
        if steps > self.original_steps:
            raise ValueError(f"steps={steps}: this consistency model was distilled on {self.original_steps} "
                             f"timesteps and samples in at most that many (2-8 is what it is for)")

    def guidance_condition(self, guidance: torch.Tensor | float, batch_size: int) -> torch.Tensor:
        """The UNet's ``timestep_cond`` [batch, embedding_dim] for guidance scale(s) ``guidance``."""
        scale = torch.as_tensor(guidance, dtype=torch.float32)
        if scale.ndim == 0:
            scale = scale.expand(batch_size)
        return guidance_embedding(scale - 1.0, self.embedding_dim)


__all__ = ["LCM_SIGMA_DATA", "LCM_TIMESTEP_SCALING", "ConsistencyConfig", "boundary_scalings"]
