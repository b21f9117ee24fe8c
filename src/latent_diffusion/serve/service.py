"""The server's side of generation: requests checked into pipeline calls, results into PNGs.

:meth:`Generator.prepare` does everything that can fail because of the request (decoding the
uploads, their sizes, the mask, every argument) before a job is queued, so a bad request costs
a 4xx in milliseconds and never a place in line; the returned :class:`PreparedJob` is then run
on a worker thread by the queue, reporting each denoising step.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from latent_diffusion.pipelines.base import GenerationResult, Pipeline
from latent_diffusion.pipelines.images import to_model_mode
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.pipelines.png import png_bytes
from latent_diffusion.pipelines.tasks import TASKS
from latent_diffusion.serve.jobs import Job
from latent_diffusion.serve.schemas import GeneratedImage, GenerationResponse

RANDOM_SEED_BOUND = 2**32  # random seeds stay exact in JavaScript numbers (53-bit)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class RequestError(ValueError):
    """A request the server cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    """Per-server caps on what one request may ask for (below the API's hard limits)."""

    max_steps: int = 150
    max_images: int = 8
    max_input_side: int = 2048


@dataclass
class PreparedJob:
    """A checked request: what to queue (``run``), how many steps it will report, its seed."""

    task: str
    seed: int
    total_steps: int
    run: Callable[[Job], GenerationResponse]


def decode_image(data: str, what: str, max_side: int) -> Any:
    """A base64 (or ``data:`` URL) image upload as a loaded PIL image; RequestError when it is not
    base64, not an image, or larger than ``max_side`` (checked from the header, before decoding
    the pixels, so a small file that unpacks to gigapixels is refused cheaply)."""
    from PIL import Image, UnidentifiedImageError

    if data.startswith("data:"):
        header, _, data = data.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(f"{what} is a data URL without ;base64; send base64 image data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(f"{what} is not valid base64 ({err}); send the image file's bytes base64-encoded") from err
    if not raw:
        raise RequestError(f"{what} is empty; send a PNG or JPEG image")
    try:
        # Pillow's own decompression-bomb check fires on size alone; ours gives a clear message first.
        image = Image.open(io.BytesIO(raw))
        if image.format not in IMAGE_FORMATS:
            raise RequestError(f"{what} is a {image.format} file; send one of {', '.join(IMAGE_FORMATS)}")
        width, height = image.size
        if max(width, height) > max_side:
            raise RequestError(f"{what} is {width}x{height}; this server takes images up to {max_side} px a side",
                               status=413)
        image.load()
    except RequestError:
        raise
    except UnidentifiedImageError:  # its text names an in-memory buffer ("<_io.BytesIO object at 0x...>")
        raise RequestError(f"{what} is not an image file Pillow can identify; send a PNG or JPEG file") from None
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise RequestError(f"{what} is not a readable image ({err}); send a PNG or JPEG file") from err
    return image


def encode_result(task: str, seed: int, result: GenerationResult, queued_s: float) -> GenerationResponse:
    """A pipeline's result as the API response: PNGs (with metadata chunks) in base64."""
    images = []
    for image, metadata in zip(result.images, result.metadata):
        data = base64.b64encode(png_bytes(image, metadata)).decode("ascii")
        images.append(GeneratedImage(png_base64=data, index=metadata.index, seed=seed, width=image.size[0],
                                     height=image.size[1], metadata=asdict(metadata)))
    timings = {"queued": round(queued_s, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
    return GenerationResponse(task=task, seed=seed, images=images, timings=timings)


class Generator:
    """The loaded pipelines behind the API. ``upscale`` is optional (None: the task is off).

    Text-to-image, image-to-image and inpainting share one model's components, so a server holds
    one copy of the weights for all three.
    """

    def __init__(self, text_to_image: Pipeline, image_to_image: Pipeline, inpaint: Pipeline,
                 upscale: Pipeline | None = None) -> None:
        self.pipelines: dict[str, Pipeline | None] = {"txt2img": text_to_image, "img2img": image_to_image,
                                                      "inpaint": inpaint, "upscale": upscale}

    @classmethod
    def from_pretrained(cls, model: Any = None, upscaler: Any = None, device: str = "cpu") -> Generator:
        """Load a model folder (None: the shipped default; or components) and optionally an
        upscaling model folder (or components)."""
        from latent_diffusion.pipelines.text_to_image import TextToImage

        upscale = None
        if upscaler is not None:
            from latent_diffusion.pipelines.upscale import Upscale

            upscale = Upscale.from_pretrained(upscaler, device=device)
        return cls.from_components(TextToImage.from_pretrained(model, device=device), upscale)

    @classmethod
    def from_components(cls, text_to_image: Pipeline, upscale: Pipeline | None = None) -> Generator:
        """Image-to-image and inpainting pipelines over ``text_to_image``'s model, plus ``upscale``."""
        from latent_diffusion.pipelines.image_to_image import ImageToImage
        from latent_diffusion.pipelines.inpaint import Inpaint

        components, model_hash = text_to_image.components, text_to_image.model_hash

        def sibling(pipeline_class: type[Pipeline]) -> Pipeline:
            pipe = pipeline_class(components, model_hash, precision=text_to_image.precision)
            pipe.backend = text_to_image.backend  # one set of weights (and compiled graphs) for the three tasks
            return pipe

        return cls(text_to_image, sibling(ImageToImage), sibling(Inpaint), upscale)

    @functools.cached_property
    def memory(self) -> dict[str, Any]:
        """The memory budget (pipelines/budget.py) and the largest txt2img side one image may have
        under it; computed once, as the page polls /api/health."""
        from latent_diffusion.pipelines.budget import largest_side, memory_budget

        text, budget = self.pipelines["txt2img"], memory_budget()
        return {"memory_budget_gib": round(budget / 2**30, 2),
                "max_image_side": largest_side(text.components, text.size_multiple, 1, budget, text.vae_tile)}

    @property
    def tasks(self) -> list[str]:
        """The tasks this server can run."""
        return [task for task, pipe in self.pipelines.items() if pipe is not None]

    def info(self, limits: Limits) -> dict[str, Any]:
        """What the page needs to build its form: sizes, tasks, the server's ``limits``."""
        text = self.pipelines["txt2img"]
        upscale = self.pipelines["upscale"]
        return {
            # What a request with null steps, sampler or guidance gets (a consistency model has its own).
            "sampling_defaults": text.sampling_defaults,
            **self.memory,
            "tasks": self.tasks,
            "native_size": text.native_size,
            "image_channels": text.components.autoencoder.config.out_channels,
            "conditioner": text.components.conditioner.kind,
            "model_hash": text.model_hash,
            "upscale_factor": getattr(upscale, "factor", None),
            "upscale_input_size": None if upscale is None else upscale.native_size // upscale.factor,
            "limits": asdict(limits),
        }

    # ---- checking ----------------------------------------------------------------------------
    def _pipeline(self, task: str) -> Pipeline:
        pipe = self.pipelines.get(task)
        if pipe is None:
            raise RequestError(f"{task} is not enabled on this server: start it with `ldm serve --upscaler PATH` "
                               "(an upscaling model folder) to turn it on", status=409)
        return pipe

    def prepare(self, task: str, request: Any, limits: Limits) -> PreparedJob:
        """Check ``request`` for ``task`` within ``limits`` (the server's) and return the job to
        queue; RequestError on bad input. The pipeline plans the call here (every argument, the
        uploads' sizes and the mask checked once, the model's defaults filled in), so the worker
        only runs it."""
        pipe = self._pipeline(task)
        if request.num_images > limits.max_images:
            raise RequestError(f"num_images={request.num_images} is more than this server allows "
                               f"({limits.max_images} per request)")
        seed = request.seed if request.seed is not None else secrets.randbelow(RANDOM_SEED_BOUND)
        channels = pipe.components.autoencoder.config.out_channels
        # The input image in the model's mode (a mask is read as it is: black and white).
        images = [to_model_mode(decode_image(getattr(request, name), name, limits.max_input_side), channels)
                  if name == "image" else decode_image(getattr(request, name), name, limits.max_input_side)
                  for name in TASKS[task].images]
        try:
            options = SamplingOptions(num_images=request.num_images, steps=request.steps, sampler=request.sampler,
                                      guidance=request.guidance, negative_prompt=request.negative_prompt,
                                      seed=seed, rescale=request.rescale)
            call = pipe.plan(*images, request.prompt, options, **TASKS[task].arguments_of(request))
        except ValueError as err:
            raise RequestError(str(err)) from err
        if call.options.steps > limits.max_steps:
            raise RequestError(f"steps={call.options.steps} is more than this server allows ({limits.max_steps})")
        total = call.total_steps
        submitted = time.perf_counter()

        def run(job: Job) -> GenerationResponse:
            queued = time.perf_counter() - submitted
            job.progress(0, total)  # also the first cancellation check, before any work
            result = call.run(interrupt=job.check, progress=False,
                              callback=lambda info: job.progress(min(int(info["i"]) + 1, total), total))
            return encode_result(task, seed, result, queued)

        return PreparedJob(task, seed, total, run)


__all__ = ["Generator", "Limits", "PreparedJob", "RequestError", "decode_image", "encode_result"]
