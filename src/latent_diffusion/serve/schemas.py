"""The HTTP API's request and response bodies, as pydantic models (they are the OpenAPI schema).

Requests are strict (``"25"`` is not a number of steps, unknown fields are refused) so a client's
typo is reported, not silently ignored. Bounds here are the API's hard limits; a server may set
lower ones (:class:`~latent_diffusion.serve.app.ServeSettings`), checked by the handlers. Images
travel as base64 PNG (or JPEG/WebP) strings, with or without a ``data:image/...;base64,`` prefix,
because that is what both a browser canvas (``toDataURL``) and ``base64 < file.png`` give.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from latent_diffusion.pipelines.inpaint import METHODS
from latent_diffusion.pipelines.options import MAX_SEED
from latent_diffusion.pipelines.tasks import TASKS as TASK_TABLE
from latent_diffusion.pipelines.upscale import DEFAULT_BACK_PROJECTION
from latent_diffusion.sampling import SAMPLERS

MAX_STEPS = 1000  # a schedule's length; servers cap lower (ServeSettings.max_steps)
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 2000
Sampler = Literal[tuple(sorted(SAMPLERS))]  # type: ignore[valid-type]
TASKS = tuple(TASK_TABLE)  # txt2img, img2img, inpaint, upscale


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS,
                                        description="what to steer away from (null: the unconditional input)")
    sampler: Sampler | None = Field(None, description="sampling method (null: the model's, dpmpp_2m or lcm)")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                              description="denoising steps (null: the model's, 25 or a consistency model's own)")
    guidance: float | None = Field(None, ge=0.0, le=100.0,
                                   description="classifier-free guidance scale, 1 = none (null: the model's, 5 or "
                                               "a consistency model's own)")
    rescale: float = Field(0.0, ge=0.0, le=1.0, description="guidance rescale (Lin et al. 2023)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED,
                             description="random seed; null picks a random one (returned in the response)")
    num_images: int = Field(1, ge=1, le=MAX_IMAGES, description="images to make")


class Txt2ImgRequest(_Request):
    """Text-to-image: images from a prompt."""

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description='the text prompt ("" = unconditional)')


class Img2ImgRequest(_Request):
    """Image-to-image (SDEdit): variations of an image following a prompt."""

    image: str = Field(..., description="the input image, base64 PNG/JPEG (square; resized to the model's size)")
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="the text prompt")
    strength: float = Field(0.75, ge=0.0, le=1.0, description="how much to change: 0 keeps, 1 redraws")


class InpaintRequest(_Request):
    """Inpainting: repaint the white region of a mask following a prompt."""

    image: str = Field(..., description="the input image, base64 PNG/JPEG (square)")
    mask: str = Field(..., description="base64 PNG of the image's size: white (255) = repaint, black (0) = keep, "
                                       "nothing else")
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="the text prompt")
    strength: float = Field(1.0, ge=0.0, le=1.0, description="1 fills the hole from noise; lower keeps some of it")
    method: Literal[METHODS] = Field("auto", description="masked: any model; concat: an inpainting model; "  # type: ignore[valid-type]
                                                         "auto picks from the model")


class UpscaleRequest(_Request):
    """Super-resolution: an image made larger by the upscaling model's factor."""

    image: str = Field(..., description="the low-resolution input, base64 PNG/JPEG (square)")
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="the text prompt (\"\" for models without text)")
    guidance: float = Field(1.0, ge=0.0, le=100.0, description="classifier-free guidance scale (1 = none)")
    back_projection: int = Field(DEFAULT_BACK_PROJECTION, ge=0, le=100,
                                 description="rounds pulling the output onto the input (0 = off)")


REQUESTS: dict[str, type[_Request]] = {"txt2img": Txt2ImgRequest, "img2img": Img2ImgRequest,
                                       "inpaint": InpaintRequest, "upscale": UpscaleRequest}


class GeneratedImage(BaseModel):
    """One image of a batch: a PNG with the generation metadata in its text chunks."""

    png_base64: str = Field(..., description="the PNG file, base64; its text chunks say how it was made")
    index: int = Field(..., description="place in the batch; the batch's seed and index reproduce it")
    seed: int = Field(..., description="the batch's seed")
    width: int
    height: int
    metadata: dict[str, Any] = Field(..., description="the GenerationMetadata stored in the PNG")


class GenerationResponse(BaseModel):
    """What a finished generation returns."""

    task: str
    seed: int = Field(..., description="the seed used (the one picked when the request had none)")
    images: list[GeneratedImage]
    timings: dict[str, float] = Field(..., description="seconds spent queued, encoding, denoising, decoding")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: one readable message, plus the field errors for a bad request."""

    detail: str
    errors: list[dict[str, Any]] | None = None


__all__ = ["ErrorResponse", "GeneratedImage", "GenerationResponse", "Img2ImgRequest", "InpaintRequest",
           "MAX_IMAGES", "MAX_PROMPT_CHARS", "MAX_STEPS", "REQUESTS", "TASKS", "Txt2ImgRequest", "UpscaleRequest"]
