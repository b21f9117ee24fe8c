"""Inpainting: an image, a mask (white = repaint) and a prompt in, the hole filled out.

    from latent_diffusion.pipelines import Inpaint

    pipe = Inpaint.from_pretrained()
    result = pipe("face.png", "mask.png", "a grinning face", seed=0)

Two methods, one pipeline (chosen from the model, no task subclass):

* ``"masked"`` works with any text-to-image model: at every step the region to keep is replaced
  by the original latent noised to the current level (:class:`~latent_diffusion.sampling.masking.
  MaskedDenoiser`); the mask is max-pooled to the latent grid, so cells touching the hole are
  regenerated.
* ``"concat"`` is for a model trained to inpaint (``image_condition="masked_image"``, as Stable
  Diffusion's inpainting model): the UNet sees the noisy latent stacked with the mask at latent
  resolution and the latent of the masked image (hole set to grey, 0); see conditioning/image.py.

Either way the decoded image is blended with the input outside the hole, so every kept pixel is
the input's pixel exactly (at the model's size: the input is resized when it differs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from latent_diffusion.conditioning.image import masked_image_condition
from latent_diffusion.model.components import encode_images
from latent_diffusion.pipelines.base import GenerationResult, Pipeline, PlannedCall
from latent_diffusion.pipelines.images import ImageInput, input_hash, read_mask, resize_mask
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.sampling import latent_keep_mask
from latent_diffusion.validation import check_choice, check_in_range

METHODS = ("auto", "masked", "concat")


class Inpaint(Pipeline):
    """Fill the white region of a mask following a prompt (see the module docstring)."""

    image_conditions = ("none", "masked_image")

    @property
    def concat_model(self) -> bool:
        """Whether the model was trained to inpaint (mask + masked-image latent as input)."""
        return self.components.image_condition == "masked_image"

    def resolve_method(self, method: str) -> str:
        """``method`` with "auto" resolved from the model; a ValueError when it cannot be used."""
        check_choice("method", method, METHODS)
        if method == "auto":
            return "concat" if self.concat_model else "masked"
        if method == "concat" and not self.concat_model:
            raise ValueError("method='concat' needs an inpainting model (UNet concat_channels = 1 + latent "
                             "channels); this model is text-to-image only: use method='masked'")
        if method == "masked" and self.components.image_condition != "none":
            raise ValueError("method='masked' needs a text-to-image model (no image condition); this one has "
                             f"image_condition={self.components.image_condition!r}: use method='concat'")
        return method

    def __call__(self, image: ImageInput, mask: ImageInput, prompt: str | list[str], strength: float = 1.0,
                 method: str = "auto", options: SamplingOptions | None = None, *,
                 callback: Callable[[dict[str, Any]], None] | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = True,
                 **sampling: Any) -> GenerationResult:
        """Make ``num_images`` fills per prompt (prompt-major order).

        ``mask``: white (255; 1 for a tensor) = repaint, black = keep, nothing else, the image's
        size. ``strength`` below 1 starts the hole from the noised original instead of noise.
        ``method``: "auto" (concat for an inpainting model, else masked), "masked" or "concat".
        Other arguments are those of :class:`~latent_diffusion.pipelines.text_to_image.TextToImage`.
        """
        options = SamplingOptions.merge(options, **sampling)
        return self.plan(image, mask, prompt, options, strength=strength, method=method).run(callback, interrupt,
                                                                                             progress)

    def plan(self, image: ImageInput, mask: ImageInput, prompt: str | list[str],
             options: SamplingOptions | None = None, strength: float = 1.0, method: str = "auto") -> PlannedCall:
        """The checked call (see :class:`PlannedCall`); ``pipe(...)`` is ``pipe.plan(...).run(...)``."""
        method = self.resolve_method(method)
        check_in_range("strength", strength, 0.0, 1.0)
        options = self.resolve(options or SamplingOptions())
        batch = self.prompt_batch(prompt, options.negative_prompt, options.num_images)
        picture, pixels, size = self.prepare_image(image, options.size, len(batch))
        hole = resize_mask(read_mask(mask, picture), size)
        count = len(batch)

        def inputs() -> dict[str, Any]:
            init = encode_images(self.components, pixels).float().cpu().expand(count, -1, -1, -1)
            if method == "concat":
                concat = masked_image_condition(self.components.autoencoder, pixels, hole).float().cpu()
                return {"init_latents": init, "concat": concat.expand(count, -1, -1, -1)}
            keep = latent_keep_mask(hole, self.components.autoencoder.downsampling_factor)
            return {"init_latents": init, "keep": keep.expand(count, -1, -1, -1)}

        def blend(decoded: torch.Tensor, interrupt: Callable[[], None] | None) -> torch.Tensor:
            # Kept pixels are the input's: the decoder only ever contributes inside the hole.
            return hole * decoded + (1 - hole) * pixels.to(decoded.dtype)

        return self._plan(batch, options, size, strength=strength, inputs=inputs, finish=blend,
                          task=f"inpaint-{method}", image_hash=input_hash(image), mask_hash=input_hash(mask))


__all__ = ["METHODS", "Inpaint"]
