"""Image-to-image (SDEdit, Meng et al. 2022): an image plus a prompt in, variations out.

    from latent_diffusion.pipelines import ImageToImage

    pipe = ImageToImage.from_pretrained()
    result = pipe("cat.png", "a smiling cat face", strength=0.6, seed=1)

The image is encoded (posterior mode), noised to the level that ``strength`` selects and denoised
from there with the prompt: strength 0 returns the autoencoder's reconstruction, strength 1 keeps
almost nothing of the input. ``steps`` counts the whole schedule, of which ``int(steps *
strength)`` run, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_diffusion.model.components import encode_images
from latent_diffusion.pipelines.base import GenerationResult, Pipeline, PlannedCall
from latent_diffusion.pipelines.images import ImageInput, input_hash
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.validation import check_in_range


class ImageToImage(Pipeline):
    """Re-draw an image following a prompt (any conditioner kind, like text-to-image)."""

    def __call__(self, image: ImageInput, prompt: str | list[str], strength: float = 0.75,
                 options: SamplingOptions | None = None, *, callback: Callable[[dict[str, Any]], None] | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = True,
                 **sampling: Any) -> GenerationResult:
        """Make ``num_images`` variations of ``image`` per prompt (prompt-major order).

        ``strength`` in [0, 1] is how much of the schedule is re-run; the other arguments are
        those of :class:`~latent_diffusion.pipelines.text_to_image.TextToImage`.
        """
        options = SamplingOptions.merge(options, **sampling)
        return self.plan(image, prompt, options, strength=strength).run(callback, interrupt, progress)

    def plan(self, image: ImageInput, prompt: str | list[str], options: SamplingOptions | None = None,
             strength: float = 0.75) -> PlannedCall:
        """The checked call (see :class:`PlannedCall`); ``pipe(...)`` is ``pipe.plan(...).run(...)``."""
        check_in_range("strength", strength, 0.0, 1.0)
        options = self.resolve(options or SamplingOptions())
        batch = self.prompt_batch(prompt, options.negative_prompt, options.num_images)
        _, pixels, size = self.prepare_image(image, options.size, len(batch))

        def inputs() -> dict[str, Any]:
            init = encode_images(self.components, pixels).float().cpu()
            return {"init_latents": init.expand(len(batch), -1, -1, -1)}

        return self._plan(batch, options, size, strength=strength, inputs=inputs, task="img2img",
                          image_hash=input_hash(image))


__all__ = ["ImageToImage"]
