"""How to sample, as one typed object that the command line, the server and the pipelines share.

:class:`SamplingOptions` holds what every task takes (images per prompt, steps, sampler, guidance,
negative prompt, seed, size, guidance rescale). Constructing one checks everything that needs no
model, so ``ldm generate`` refuses a bad ``--steps`` before it loads any weights; a pipeline then
fills the model's defaults into the fields left None and checks what needs the model (the
schedule's length, a consistency model's rules) once, in
:meth:`~latent_diffusion.pipelines.base.Pipeline.plan`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from latent_diffusion.sampling import SAMPLERS
from latent_diffusion.validation import check_choice, check_in_range, check_integer

MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_IMAGES = 10_000  # one batch; far beyond memory anyway, but catches a typo before any work


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling arguments every task shares; None (steps, sampler, guidance, size) means the
    model's own (dpmpp_2m, 25 steps, guidance 5, the native size; a consistency model's folder
    names its lcm steps and guidance).

    ``num_images`` per prompt (prompt-major order); ``negative_prompt`` (one, or one per prompt)
    replaces the unconditional input; ``guidance`` is the classifier-free guidance scale (1: the
    conditional model alone); ``rescale`` is guidance rescale (Lin et al. 2023) in [0, 1]; the same
    ``seed`` gives the same pixels.
    """

    num_images: int = 1
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    negative_prompt: str | list[str] | None = None
    seed: int = 0
    size: int | None = None
    rescale: float = 0.0

    def __post_init__(self) -> None:
        if self.steps is not None:
            check_integer("steps", self.steps, 1)
        if self.sampler is not None:
            check_choice("sampler", self.sampler, sorted(SAMPLERS))
        guidance = self.guidance
        if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                     or not 0 <= guidance < math.inf):
            raise ValueError(f"guidance={guidance!r} must be a finite number >= 0 (1 = no guidance)")
        check_in_range("rescale", self.rescale, 0.0, 1.0)
        check_integer("seed", self.seed, 0, MAX_SEED)
        check_integer("num_images", self.num_images, 1, MAX_IMAGES)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, i.e. the keyword arguments a pipeline call takes for them."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def merge(cls, options: SamplingOptions | None, **overrides: Any) -> SamplingOptions:
        """``options`` (None: the defaults) with ``overrides`` set, checked; a TypeError names an
        unknown keyword and the ones there are."""
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown sampling argument(s) {', '.join(unknown)}; the sampling arguments are "
                            f"{', '.join(cls.names())}")
        if options is not None and not isinstance(options, SamplingOptions):
            raise TypeError(f"options must be SamplingOptions, got {type(options).__name__}")
        return replace(options or cls(), **overrides)

    def with_defaults(self, defaults: dict[str, Any]) -> SamplingOptions:
        """These options with ``steps``, ``sampler`` and ``guidance`` taken from ``defaults`` where None."""
        return replace(self, **{name: defaults[name] for name in ("steps", "sampler", "guidance")
                                if getattr(self, name) is None})


__all__ = ["MAX_IMAGES", "MAX_SEED", "SamplingOptions"]
