"""Generation metadata carried inside PNG files, so every image says how to make it again.

A PNG written here holds one iTXt chunk per human-readable field (``prompt``,
``negative_prompt``, ``seed``, ``index``, ``sampler``, ``steps``, ``guidance``, ``size``,
``model_hash``, ``ldm_version``; any image viewer's "properties" shows them) and one chunk
``ldm_parameters`` with the whole :class:`GenerationMetadata` as JSON. Only the JSON chunk is read
back: the readable ones are a copy for people, and a copy is never trusted over the original.

iTXt (UTF-8) rather than tEXt (Latin-1) because prompts may hold any character.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from latent_diffusion.io import atomic_write

PARAMETERS_KEY = "ldm_parameters"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class GenerationMetadata:
    """Everything that decides one generated image (or a grid of a whole batch).

    ``prompts`` are the batch's prompts and ``num_images`` the images made per prompt, so the
    batch is ``prompts[0]`` x num_images, then ``prompts[1]`` x num_images, ... and ``index`` is
    this image's place in it (None for a grid of the whole batch). A seed names a whole batch:
    image ``index`` of a batch is only reproduced by making the same batch again, which
    :meth:`call_arguments` gives. ``negative_prompts`` has one entry per prompt (None: the
    model's unconditional input). ``model_hash`` is :func:`~latent_diffusion.model.folder.
    model_hash` of the model folder (None for a model that was never saved). ``device``, ``dtype``
    ``precision`` (``bf16``: autocast) and ``backend`` are recorded because float results differ
    between them.

    Image tasks add ``task`` ("img2img", "inpaint", "upscale"; "txt2img" otherwise), ``strength``
    and the SHA-256 of the input image (``image_hash``) and mask (``mask_hash``) as given, so a
    result can be traced to its inputs and made again from the same files; "upscale" adds its
    ``back_projection`` rounds.
    """

    prompts: tuple[str, ...]
    num_images: int
    index: int | None
    negative_prompts: tuple[str, ...] | None
    seed: int
    sampler: str
    steps: int
    guidance: float
    rescale: float
    size: int
    model_hash: str | None
    ldm_version: str
    device: str = "cpu"
    dtype: str = "float32"
    precision: str = "fp32"  # "bf16": the UNet and decoder ran under bf16 autocast
    backend: str = "torch"  # "openvino": the UNet and decoder ran in OpenVINO (latent_diffusion.backends)
    decoder: str = "full"  # "tiny": the model folder's tiny decoder made the pixels (Pipeline.set_decoder)
    task: str = "txt2img"
    strength: float | None = None
    image_hash: str | None = None
    mask_hash: str | None = None
    back_projection: int | None = None

    @property
    def prompt(self) -> str:
        """This image's prompt (for a grid: the prompts joined by " | ")."""
        if self.index is None:
            return " | ".join(self.prompts)
        return self.prompts[self.index // self.num_images]

    @property
    def negative_prompt(self) -> str | None:
        """This image's negative prompt, or None when the unconditional input was used."""
        if self.negative_prompts is None:
            return None
        if self.index is None:
            return " | ".join(self.negative_prompts)
        return self.negative_prompts[self.index // self.num_images]

    def call_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the task pipeline's call (:class:`~latent_diffusion.pipelines.
        text_to_image.TextToImage` for "txt2img") that make this image's batch again (take
        ``[index]`` of the result); image tasks also need the same image (and mask) passed in."""
        arguments = {
            "prompt": list(self.prompts),
            "num_images": self.num_images,
            "negative_prompt": None if self.negative_prompts is None else list(self.negative_prompts),
            "seed": self.seed,
            "sampler": self.sampler,
            "steps": self.steps,
            "guidance": self.guidance,
            "rescale": self.rescale,
            "size": self.size,
        }
        if self.strength is not None:
            arguments["strength"] = self.strength
        if self.task.startswith("inpaint-"):
            arguments["method"] = self.task.removeprefix("inpaint-")
        if self.task == "upscale":  # the output size follows from the input image
            del arguments["size"]
            if self.back_projection is not None:
                arguments["back_projection"] = self.back_projection
        return arguments

    def to_json(self) -> str:
        """One-line JSON of every field plus a schema version."""
        return json.dumps({"schema": SCHEMA_VERSION, **asdict(self)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GenerationMetadata:
        """Inverse of :meth:`to_json`; a ValueError names what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{PARAMETERS_KEY} is not valid JSON: {err}") from err
        if not isinstance(data, dict) or data.pop("schema", None) != SCHEMA_VERSION:
            raise ValueError(f"{PARAMETERS_KEY} is not ldm generation metadata of schema {SCHEMA_VERSION}")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown, missing = set(data) - names, required - set(data)
        if unknown or missing:
            raise ValueError(f"{PARAMETERS_KEY} has unknown fields {sorted(unknown)} / lacks {sorted(missing)}")
        data["prompts"] = tuple(data["prompts"])
        if data["negative_prompts"] is not None:
            data["negative_prompts"] = tuple(data["negative_prompts"])
        return cls(**data)

    def text_chunks(self) -> dict[str, str]:
        """The PNG text chunks: readable fields, then the JSON that :func:`read_generation_metadata` reads."""
        readable = {
            "prompt": self.prompt,
            "negative_prompt": "" if self.negative_prompt is None else self.negative_prompt,
            "seed": str(self.seed),
            "index": "grid" if self.index is None else str(self.index),
            "sampler": self.sampler,
            "steps": str(self.steps),
            "guidance": repr(self.guidance),
            "size": f"{self.size}x{self.size}",
            "model_hash": self.model_hash or "",
            "precision": self.precision,
            **({"backend": self.backend} if self.backend != "torch" else {}),
            **({"decoder": self.decoder} if self.decoder != "full" else {}),
            "ldm_version": self.ldm_version,
            "Software": f"latent_diffusion {self.ldm_version}",
        }
        if self.task != "txt2img":
            readable.update(task=self.task, strength=repr(self.strength), image_hash=self.image_hash or "")
            if self.mask_hash:
                readable["mask_hash"] = self.mask_hash
            if self.back_projection is not None:
                readable["back_projection"] = str(self.back_projection)
        return {**readable, PARAMETERS_KEY: self.to_json()}


def _png_info(metadata: GenerationMetadata) -> Any:
    """The ``PngInfo`` holding ``metadata``'s text chunks (one construction for files and bytes)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.text_chunks().items():
        info.add_itxt(key, value)
    return info


def write_png(path: str | Path, image: Any, metadata: GenerationMetadata) -> Path:
    """Atomically write a PIL ``image`` as PNG at ``path`` with ``metadata`` in text chunks."""
    info = _png_info(metadata)
    path = Path(path)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return path


def png_bytes(image: Any, metadata: GenerationMetadata) -> bytes:
    """A PIL ``image`` as PNG bytes carrying ``metadata``, exactly as :func:`write_png` writes it
    (for servers and other callers that never touch the disk)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=_png_info(metadata))
    return buffer.getvalue()


def read_generation_metadata(path: str | Path) -> GenerationMetadata:
    """The :class:`GenerationMetadata` stored in a PNG written by ``ldm generate``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # text chunks after the image data are only read with the pixels
            text = dict(getattr(image, "text", {}))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable image: {err}") from err
    if PARAMETERS_KEY not in text:
        raise ValueError(f"{str(path)!r} has no {PARAMETERS_KEY} chunk; it was not written by `ldm generate`")
    return GenerationMetadata.from_json(text[PARAMETERS_KEY])


__all__ = ["PARAMETERS_KEY", "GenerationMetadata", "png_bytes", "read_generation_metadata", "write_png"]
