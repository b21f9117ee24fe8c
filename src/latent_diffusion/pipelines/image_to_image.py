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

import time
from collections.abc import Callable
from typing import Any

from latent_diffusion.model.components import encode_images
from latent_diffusion.pipelines.base import GenerationResult, Pipeline
from latent_diffusion.pipelines.images import ImageInput, input_hash
from latent_diffusion.validation import check_in_range


class ImageToImage(Pipeline):
    """Re-draw an image following a prompt (any conditioner kind, like text-to-image)."""

    def __call__(
        self,
        image: ImageInput,
        prompt: str | list[str],
        strength: float = 0.75,
        num_images: int = 1,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        negative_prompt: str | list[str] | None = None,
        seed: int = 0,
        size: int | None = None,
        rescale: float = 0.0,
        callback: Callable[[dict[str, Any]], None] | None = None,
        interrupt: Callable[[], None] | None = None,
        progress: bool = True,
    ) -> GenerationResult:
        """Make ``num_images`` variations of ``image`` per prompt (prompt-major order).

        ``strength`` in [0, 1] is how much of the schedule is re-run; the other arguments are
        those of :class:`~latent_diffusion.pipelines.text_to_image.TextToImage`.
        """
        check_in_range("strength", strength, 0.0, 1.0)
        steps, sampler, guidance = self.check_sampling(steps, sampler, guidance, seed, rescale, num_images)
        batch = self.prompt_batch(prompt, negative_prompt, num_images)
        _, pixels, size = self.prepare_image(image, size, len(batch))
        timings: dict[str, float] = {}
        start = time.perf_counter()
        init = encode_images(self.components, pixels).float().cpu().expand(len(batch), -1, -1, -1)
        cond, uncond = self._encode(batch, timings)
        timings["encode"] = time.perf_counter() - start  # the image's encoding and the prompts'
        sampling = dict(seed=seed, steps=steps, sampler=sampler, guidance=guidance, rescale=rescale,
                        latent_size=init.shape[-1], init_latents=init, strength=float(strength))
        return self._generate(batch, cond, uncond, timings, progress=progress, callback=callback,
                              interrupt=interrupt,
                              sampling=sampling, size=size, task="img2img", strength=float(strength),
                              image_hash=input_hash(image))


__all__ = ["ImageToImage"]
