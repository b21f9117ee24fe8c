"""Super-resolution (the paper's LDM-SR): a low-resolution image in, one ``factor`` times larger out.

    from latent_diffusion.pipelines import Upscale

    pipe = Upscale.from_pretrained()            # the shipped models/emoji-sr-x4
    result = pipe("small.png", seed=0)          # 16x16 -> 64x64

The model is a latent diffusion model whose UNet sees the low-resolution image stacked onto its
noisy latent (``image_condition="low_res"``, conditioning/image.py); it is sampled from noise like
text-to-image. Models trained without text take the empty prompt; guidance then has nothing to
contrast and defaults to 1 (off).

The decoded picture is then back-projected onto the input (``back_projection`` rounds,
:func:`~latent_diffusion.conditioning.image.back_project`) until downscaling it the way the model
was trained (bicubic, antialiased) gives the input back: what the input determines (colours, the
coarse shapes the autoencoder gets slightly wrong) comes from the input, and only the detail above
its resolution from the model. ``back_projection=0`` returns the decoder's output as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.conditioning.image import back_project, low_res_condition
from latent_diffusion.pipelines.base import DEFAULT_SAMPLING, DEFAULT_UPSCALER_NAME, GenerationResult, Pipeline, PlannedCall
from latent_diffusion.pipelines.images import ImageInput, check_square, image_to_tensor, input_hash, read_image
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.validation import check_integer

# Three rounds: benchmarks/image_tasks.py --tasks sr (128 validation pictures) puts the emoji-64
# autoencoder's reconstructions at 18.52 dB, 25.25 dB back-projected. One against three rounds was
# a one-off check (64 Twitter validation emoji: 25.3 vs 25.9 dB), not a script in this repository.
DEFAULT_BACK_PROJECTION = 3


def check_back_projection(rounds: int) -> None:
    """A ValueError unless ``rounds`` is an integer from 0 (off) to 100."""
    check_integer("back_projection", rounds, 0, 100)


class Upscale(Pipeline):
    """Upscale an image by the model's ``low_res_factor`` (see the module docstring)."""

    image_conditions = ("low_res",)
    default_model = DEFAULT_UPSCALER_NAME

    @property
    def factor(self) -> int:
        """How many times larger the output side is than the input side."""
        return self.components.low_res_factor

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """dpmpp_2m, 25 steps, and guidance 1 (off): an upscaler is mostly trained without text."""
        return {**DEFAULT_SAMPLING, "guidance": 1.0}

    def __call__(self, image: ImageInput, prompt: str | list[str] = "", back_projection: int = DEFAULT_BACK_PROJECTION,
                 options: SamplingOptions | None = None, *, callback: Callable[[dict[str, Any]], None] | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = True,
                 **sampling: Any) -> GenerationResult:
        """Make ``num_images`` upscalings of ``image`` per prompt; the output side is ``factor``
        times the input's (which must make a size the model can produce). ``back_projection``
        rounds pull each output onto the input (0: off; see the module docstring). The sampling
        arguments are those of :class:`~latent_diffusion.pipelines.text_to_image.TextToImage`,
        except ``size``, which follows from the input."""
        options = SamplingOptions.merge(options, **sampling)
        return self.plan(image, prompt, options, back_projection=back_projection).run(callback, interrupt, progress)

    def plan(self, image: ImageInput, prompt: str | list[str] = "", options: SamplingOptions | None = None,
             back_projection: int = DEFAULT_BACK_PROJECTION) -> PlannedCall:
        """The checked call (see :class:`PlannedCall`); ``pipe(...)`` is ``pipe.plan(...).run(...)``."""
        options = self.resolve(options or SamplingOptions())
        check_back_projection(back_projection)
        batch = self.prompt_batch(prompt, options.negative_prompt, options.num_images)
        picture = read_image(image, self.components.autoencoder.config.out_channels)
        check_square(picture)
        side = picture.shape[-1] if hasattr(picture, "shape") else picture.size[0]
        if options.size is not None and options.size != side * self.factor:
            raise ValueError(f"size={options.size}: an upscaler's output side follows from the input "
                             f"({side} x {self.factor} = {side * self.factor}); leave size unset")
        try:
            size = self.check_size(side * self.factor, len(batch))
        except ValueError as err:
            raise ValueError(f"a {side}x{side} input cannot be upscaled x{self.factor} by this model: {err}") from err
        latent_size = size // self.components.autoencoder.downsampling_factor
        small = image_to_tensor(picture, side)

        def inputs() -> dict[str, Any]:
            return {"concat": low_res_condition(small, latent_size).expand(len(batch), -1, -1, -1)}

        def finish(images: torch.Tensor, interrupt: Callable[[], None] | None) -> torch.Tensor:
            return back_project(images, small.to(images), back_projection, interrupt)

        return self._plan(batch, options, size, inputs=inputs, finish=finish, task="upscale",
                          image_hash=input_hash(image), back_projection=back_projection)


__all__ = ["DEFAULT_BACK_PROJECTION", "Upscale", "check_back_projection"]
