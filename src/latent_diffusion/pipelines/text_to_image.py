"""Text-to-image: prompts in, PIL images (and how they were made) out.

    from latent_diffusion.pipelines import TextToImage

    pipe = TextToImage.from_pretrained()            # the shipped models/emoji-styles, on the CPU
    result = pipe("a smiling cat", num_images=4, seed=1)
    result.images[0].save("cat.png")                # or: for image in result: ...
    result.metadata[0].call_arguments()             # the arguments that make this batch again

The pipeline only wires parts together (paper Sec. 3.3): the conditioner encodes the prompts
(tau_theta), a sampler integrates the reverse process over the guided UNet in latent space, and
the autoencoder's decoder maps the latents to pixels. The same arguments give the same pixels:
the noise comes from one CPU generator seeded with ``seed`` (see ``generate.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_diffusion.pipelines.base import (
    DEFAULT_MODEL_NAME,
    GenerationResult,
    Pipeline,
    check_arguments,
    default_model_folder,
)


class TextToImage(Pipeline):
    """Generate images from prompts with a :class:`DiffusionComponents` model (any conditioner
    kind; see :class:`~latent_diffusion.pipelines.base.Pipeline`)."""

    def __call__(
        self,
        prompt: str | list[str],
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
        """Make ``num_images`` images per prompt (prompt-major order) from seeded noise.

        ``steps``, ``sampler`` and ``guidance`` (the classifier-free guidance scale, 1: conditional
        model only) default to the model's own (:attr:`sampling_defaults`: dpmpp_2m, 25 steps,
        guidance 5; a latent consistency model's folder names its lcm steps and guidance);
        ``negative_prompt`` (one, or one per prompt) replaces the unconditional input;
        ``rescale`` is guidance rescale (Lin et al. 2023); ``size`` the image side (None: the
        model's native size); ``callback`` gets the sampler's per-step dict; ``interrupt()`` is
        called after each step and before decoding and each decoded tile (raise there to stop: how
        ``ldm serve`` cancels); ``progress`` shows a tqdm bar over the denoising steps.
        """
        steps, sampler, guidance = self.check_sampling(steps, sampler, guidance, seed, rescale, num_images)
        batch = self.prompt_batch(prompt, negative_prompt, num_images)
        size = self.check_size(size, len(batch))
        timings: dict[str, float] = {}
        cond, uncond = self._encode(batch, timings)
        sampling = dict(seed=seed, steps=steps, sampler=sampler, guidance=guidance, rescale=rescale,
                        latent_size=size // self.components.autoencoder.downsampling_factor)
        return self._generate(batch, cond, uncond, timings, progress=progress, callback=callback,
                              interrupt=interrupt,
                              sampling=sampling, size=size)


__all__ = ["DEFAULT_MODEL_NAME", "GenerationResult", "TextToImage", "check_arguments", "default_model_folder"]
