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
    PlannedCall,
    default_model_folder,
)
from latent_diffusion.pipelines.options import SamplingOptions


class TextToImage(Pipeline):
    """Generate images from prompts with a :class:`DiffusionComponents` model (any conditioner
    kind; see :class:`~latent_diffusion.pipelines.base.Pipeline`)."""

    def __call__(self, prompt: str | list[str], options: SamplingOptions | None = None, *,
                 callback: Callable[[dict[str, Any]], None] | None = None,
                 interrupt: Callable[[], None] | None = None, progress: bool = True,
                 **sampling: Any) -> GenerationResult:
        """Make ``num_images`` images per prompt (prompt-major order) from seeded noise.

        The sampling arguments (``num_images``, ``steps``, ``sampler``, ``guidance``,
        ``negative_prompt``, ``seed``, ``size``, ``rescale``) are the fields of
        :class:`~latent_diffusion.pipelines.options.SamplingOptions`, given as ``options`` or as
        keywords (which override ``options``); None takes the model's own (:attr:`sampling_defaults`).
        ``callback``, ``interrupt`` and ``progress``: :meth:`PlannedCall.run`.
        """
        return self.plan(prompt, SamplingOptions.merge(options, **sampling)).run(callback, interrupt, progress)

    def plan(self, prompt: str | list[str], options: SamplingOptions | None = None) -> PlannedCall:
        """The checked call (see :class:`PlannedCall`); ``pipe(...)`` is ``pipe.plan(...).run(...)``."""
        options = self.resolve(options or SamplingOptions())
        batch = self.prompt_batch(prompt, options.negative_prompt, options.num_images)
        return self._plan(batch, options, self.check_size(options.size, len(batch)))


__all__ = ["DEFAULT_MODEL_NAME", "GenerationResult", "SamplingOptions", "TextToImage", "default_model_folder"]
