"""What the task pipelines share: model loading, size checks, conditions, the sampler loop.

Each task (:class:`~latent_diffusion.pipelines.text_to_image.TextToImage`,
:class:`~latent_diffusion.pipelines.image_to_image.ImageToImage`,
:class:`~latent_diffusion.pipelines.inpaint.Inpaint`) is this plus what it feeds the sampler:
pure noise, a noised encoded image, or a noised image with a mask. The model is never
subclassed per task; a task is a way of calling :func:`~latent_diffusion.model.reverse_process.sample_latents`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import latent_diffusion
from latent_diffusion.backends import Backend
from latent_diffusion.hardware import resolve_precision
from latent_diffusion.model.components import DiffusionComponents, decode_images
from latent_diffusion.model.folder import load_components, model_hash
from latent_diffusion.model.reverse_process import DEFAULT_SAMPLING, check_consistency_call, sample_latents, sampling_sigmas
from latent_diffusion.pipelines.budget import check_memory
from latent_diffusion.pipelines.images import ImageInput, check_square, image_to_tensor, read_image
from latent_diffusion.pipelines.options import MAX_SEED, SamplingOptions
from latent_diffusion.pipelines.png import GenerationMetadata
from latent_diffusion.pipelines.tasks import tasks_for
from latent_diffusion.pixels import images_to_pil
from latent_diffusion.validation import check_choice, check_integer, check_positive

DEFAULT_MODEL_NAME = "emoji-styles"
DEFAULT_UPSCALER_NAME = "emoji-sr-x4"  # the default of Upscale / ``ldm upscale``
DEFAULT_VAE_TILE = 64  # latents per tile side of enable_vae_tiling / --vae-tiling
DECODERS = ("tiny", "full")  # set_decoder / --decoder


def default_model_folder(name: str = DEFAULT_MODEL_NAME) -> Path:
    """A shipped model folder, ``models/<name>`` at the root of the source tree (default: the
    text-to-image model, ``DEFAULT_MODEL_NAME``)."""
    return Path(latent_diffusion.__file__).resolve().parents[2] / "models" / name


@dataclass
class GenerationResult:
    """Images of one call, with the metadata of each and the time spent per stage.

    Iterating, indexing and ``len`` act on ``images``, so a result can be used as the list of
    images. ``latents`` are the sampler's output (before decoding); ``timings`` holds the
    seconds spent in ``"encode"`` (text), ``"denoise"`` (all sampler steps) and ``"decode"``.
    """

    images: list[Any]
    metadata: list[GenerationMetadata]
    latents: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.images)

    def __getitem__(self, index: int) -> Any:
        return self.images[index]


def prompt_list(name: str, value: str | list[str]) -> list[str]:
    """``value`` as a non-empty list of str, or a ValueError naming ``name``."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(p, str) for p in items):
        raise ValueError(f"{name}={value!r} must be a str or a non-empty list of str")
    return list(items)


@dataclass
class PromptBatch:
    """The prompts of one call and their negatives (None: the model's unconditional input),
    each made ``num_images`` times; ``items`` lists a batch's prompts in order (prompt-major)."""

    prompts: list[str]
    negatives: list[str] | None
    num_images: int

    @property
    def items(self) -> list[str]:
        """One prompt per image."""
        return [p for p in self.prompts for _ in range(self.num_images)]

    @property
    def negative_items(self) -> list[str] | None:
        """One negative prompt per image, or None."""
        return None if self.negatives is None else [n for n in self.negatives for _ in range(self.num_images)]

    def __len__(self) -> int:
        return len(self.prompts) * self.num_images

    def metadata_fields(self) -> dict[str, Any]:
        """The batch's part of :class:`GenerationMetadata`."""
        return {"prompts": tuple(self.prompts), "num_images": self.num_images,
                "negative_prompts": None if self.negatives is None else tuple(self.negatives)}


@dataclass
class PlannedCall:
    """A task pipeline's call with every argument checked and nothing computed yet; :meth:`run`
    does the work. ``options`` are resolved (the model's defaults filled in); ``sigmas`` are the noise
    levels the call visits, so ``total_steps`` is what its progress reports count; ``inputs()``
    makes the task's sampler inputs at run time (the encoded image, a mask, a ``concat`` image
    condition); ``finish(images, interrupt)`` post-processes the decoded images; ``metadata`` are the
    task's fields of :class:`GenerationMetadata`.

    A server plans a request when it arrives (a bad one is refused before it queues) and runs it
    on a worker; ``pipe(...)`` is ``pipe.plan(...).run(...)``.
    """

    pipeline: Pipeline
    batch: PromptBatch
    options: SamplingOptions
    size: int
    sigmas: torch.Tensor
    strength: float = 1.0
    inputs: Callable[[], dict[str, Any]] | None = None
    finish: Callable[[torch.Tensor, Callable[[], None] | None], torch.Tensor] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        """The denoising steps the call runs (image tasks run only their strength's share)."""
        return len(self.sigmas) - 1

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None,
            interrupt: Callable[[], None] | None = None, progress: bool = True) -> GenerationResult:
        """Generate: ``callback`` gets the sampler's per-step dict; ``interrupt()`` is called after
        each step and before decoding and each decoded tile (raise there to stop: how ``ldm serve``
        cancels); ``progress`` shows a tqdm bar over the denoising steps."""
        return self.pipeline._run(self, callback, interrupt, progress)


class WrongModelError(ValueError):
    """The model folder is fine but made for another task (e.g. an upscaler given to TextToImage)."""


class Pipeline:
    """What every task pipeline shares: loading a model folder, image sizes, conditions, and
    the sampler loop with its progress bar. Tasks differ only in what they feed the sampler.

    Works with every conditioner kind: text kinds read prompts, ``"class"`` reads class names
    as prompts, ``"none"`` (unconditional) only accepts the empty prompt.
    """

    # The kinds of model (``DiffusionComponents.image_condition``) the task can use.
    image_conditions: tuple[str, ...] = ("none",)
    # The shipped model ``from_pretrained(None)`` loads: ``models/<default_model>``.
    default_model: str = DEFAULT_MODEL_NAME

    def __init__(self, components: DiffusionComponents, model_hash: str | None = None,
                 precision: str = "fp32", backend: str = "torch") -> None:
        if not isinstance(components, DiffusionComponents):
            raise ValueError(f"components must be DiffusionComponents, got {type(components).__name__}")
        kind = components.image_condition
        if kind not in self.image_conditions:
            raise WrongModelError(f"{type(self).__name__} cannot use this model: it is conditioned on "
                             f"image_condition={kind!r}; use {tasks_for(kind)}")
        self.components = components.eval()
        self.model_hash = model_hash
        self.vae_tile: int | None = None
        # The model's tiny decoder, kept while set_decoder("full") has taken it out of the components.
        self._tiny_decoder = components.tiny_decoder
        self.set_precision(precision)
        self.set_backend(backend)

    def set_precision(self, precision: str) -> None:
        """``fp32``, ``bf16`` (the UNet and the decoder under bf16 autocast; weights stay as loaded)
        or ``auto``: bf16 where the device has bf16 matrix units (AMX / AVX512-BF16 CPUs, CUDA),
        else fp32. The resolved choice is :attr:`precision` and goes into each image's metadata."""
        device = next(self.components.unet.parameters()).device
        resolved = resolve_precision(precision, device)
        if hasattr(self, "backend"):  # the constructor sets the precision before the backend
            self.backend.check_precision(resolved)
        self.precision = resolved

    def set_backend(self, backend: str, cache_dir: str | Path | None = None) -> None:
        """Where the UNet and the VAE decoder run: ``torch`` (default) or ``openvino`` (the optional
        extra; a graph exported once per input shape and cached under ``cache_dir``, default
        ``~/.cache/latent-diffusion/openvino``; :mod:`latent_diffusion.backends.openvino`). The
        precision applies on either: bf16 is autocast in PyTorch, the inference precision in OpenVINO."""
        chosen = Backend(backend, self.components, None if cache_dir is None else Path(cache_dir))
        chosen.check_precision(self.precision)
        self.backend = chosen

    @property
    def decoder(self) -> str:
        """Which decoder makes the pixels: ``tiny`` (the model folder's tiny decoder) or ``full`` (the
        autoencoder's)."""
        return "full" if self.components.tiny_decoder is None else "tiny"

    def set_decoder(self, decoder: str) -> None:
        """``full``: decode with the autoencoder's decoder; ``tiny``: with the model's tiny decoder (its
        default when the folder has one: a few times faster, slightly softer; autoencoder/tiny.py)."""
        check_choice("decoder", decoder, DECODERS)
        if decoder == "tiny" and self._tiny_decoder is None:
            raise ValueError("this model has no tiny decoder: use decoder 'full', or add one with "
                             "`ldm convert MODEL DST --tiny-decoder DIR`")
        if decoder != self.decoder:
            self.components = dataclasses.replace(
                self.components, tiny_decoder=self._tiny_decoder if decoder == "tiny" else None)
            self.backend.follow_decoder(self.components)

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The sampler, steps and guidance a call uses unless told: a latent consistency model's own
        (its folder's ``consistency.json``), else :data:`DEFAULT_SAMPLING`."""
        consistency = self.components.consistency
        if consistency is None:
            return dict(DEFAULT_SAMPLING)
        return {"sampler": "lcm", "steps": consistency.steps, "guidance": consistency.guidance}

    def resolve(self, options: SamplingOptions) -> SamplingOptions:
        """``options`` with the fields left None taken from :attr:`sampling_defaults`, checked against
        this model (the schedule's length; a consistency model's sampler, steps and guidance)."""
        options = options.with_defaults(self.sampling_defaults)
        check_integer("steps", options.steps, 1, self.components.diffusion.num_timesteps)
        check_consistency_call(self.components, options.sampler, options.steps, options.guidance, options.rescale)
        return options

    def enable_vae_tiling(self, tile: int = DEFAULT_VAE_TILE) -> None:
        """Decode images larger than ``tile`` latents per side in overlapping, blended tiles
        (diffusers' ``enable_vae_tiling``): bounded memory for large images, seams blended."""
        check_positive("tile", tile)
        self.vae_tile = tile

    @classmethod
    def from_pretrained(cls, path: str | Path | DiffusionComponents | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, precision: str = "fp32", backend: str = "torch") -> Pipeline:
        """Load a model folder (None: the task's shipped default, ``models/<default_model>``) or wrap components.

        ``precision``: see :meth:`set_precision` (``auto`` picks bf16 where the CPU has bf16 units);
        ``backend``: see :meth:`set_backend`.

        Components passed in are moved to ``device``/``dtype`` in place; their ``model_hash``
        is None because they were never saved.
        """
        if isinstance(path, DiffusionComponents):
            for module in path.networks:
                module.to(device=device, dtype=dtype)
            return cls(path, precision=precision, backend=backend)
        folder = default_model_folder(cls.default_model) if path is None else Path(path)
        if path is None and not folder.is_dir():
            raise FileNotFoundError(
                f"the default model folder {str(folder)!r} does not exist (it ships with a source "
                "checkout of latent_diffusion); pass --model PATH (Python: from_pretrained(PATH)) "
                "to name another model folder, e.g. a training run's final/ folder"
            )
        components = load_components(folder, device=device, dtype=dtype)
        return cls(components, model_hash=model_hash(folder), precision=precision, backend=backend)

    # ---- what the model can make ----------------------------------------------------------
    @property
    def native_size(self) -> int:
        """Side in pixels of the images the model was trained on."""
        return self.components.resolution

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: autoencoder factor f times UNet downsampling."""
        return self.components.autoencoder.downsampling_factor * self.components.unet.downsampling_factor

    def check_size(self, size: int | None, batch: int = 1) -> int:
        """The image side to make (``None``: native); a ValueError names the allowed sizes, or the
        largest that fits the memory budget for ``batch`` images (:mod:`~latent_diffusion.pipelines.budget`)."""
        if size is None:
            size = self.native_size
        m = self.size_multiple
        if isinstance(size, bool) or not isinstance(size, int) or size < m or size % m:
            below = max(m, (size // m) * m) if isinstance(size, int) else m
            examples = sorted({below, below + m, self.native_size})
            raise ValueError(
                f"size={size!r} cannot be made by this model: sizes must be positive multiples of {m} "
                f"(autoencoder factor {self.components.autoencoder.downsampling_factor} x UNet "
                f"downsampling {self.components.unet.downsampling_factor}), e.g. {examples}; "
                f"the native size is {self.native_size}"
            )
        check_memory(self.components, size, batch, m, self.vae_tile, tile_hint=DEFAULT_VAE_TILE)
        return size

    # ---- stages -----------------------------------------------------------------------------
    def prepare_image(self, image: ImageInput, size: int | None, batch: int = 1) -> tuple[Any, torch.Tensor, int]:
        """The checked input (PIL or tensor), as a [1, C, size, size] tensor in [-1, 1], and its size.

        ``size`` None: the model's native size. The image is resized to it when needed.
        """
        channels = self.components.autoencoder.config.out_channels
        picture = read_image(image, channels)
        check_square(picture)
        size = self.check_size(size, batch)
        return picture, image_to_tensor(picture, size), size

    def prompt_batch(self, prompt: str | list[str], negative_prompt: str | list[str] | None,
                     num_images: int) -> PromptBatch:
        """Checked prompts and negatives (one negative serves every prompt)."""
        prompts = prompt_list("prompt", prompt)
        negatives = None if negative_prompt is None else prompt_list("negative_prompt", negative_prompt)
        if negatives is not None and len(negatives) == 1:
            negatives = negatives * len(prompts)
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; "
                             "pass one, or one per prompt")
        return PromptBatch(prompts, negatives, num_images)

    def _plan(self, batch: PromptBatch, options: SamplingOptions, size: int, *, strength: float | None = None,
              inputs: Callable[[], dict[str, Any]] | None = None,
              finish: Callable[[torch.Tensor, Callable[[], None] | None], torch.Tensor] | None = None,
              **metadata: Any) -> PlannedCall:
        """The :class:`PlannedCall` of a task: ``options`` resolved, the noise levels it visits (computed
        once: the progress bar's length and the sampler's schedule), and the task's run-time parts.
        ``strength``: None starts from noise; a number (image-to-image, inpainting) runs that share
        of the schedule from the noised ``init_latents`` of ``inputs()`` and goes into the metadata."""
        if strength is not None:
            metadata["strength"] = float(strength)
        strength = 1.0 if strength is None else float(strength)
        sigmas = sampling_sigmas(self.components, options.steps, options.sampler, strength=strength)
        return PlannedCall(self, batch, options, size, sigmas, strength, inputs, finish, metadata)

    def _run(self, call: PlannedCall, callback: Callable[[dict[str, Any]], None] | None,
             interrupt: Callable[[], None] | None, progress: bool) -> GenerationResult:
        """Encode (the task's image inputs and the prompts), denoise, decode, ``finish`` the images in
        [-1, 1] (e.g. blend kept pixels back), and describe each image in its metadata.
        ``interrupt()`` runs after every denoising step and before decoding and each decoded tile: an
        exception raised there (a server's cancellation) stops the call."""
        from tqdm.auto import tqdm

        batch, options, timings = call.batch, call.options, {}
        start = time.perf_counter()
        inputs = call.inputs() if call.inputs is not None else {}
        concat = inputs.pop("concat", None)
        # Guidance scale 1 and consistency models (which embed the scale) never call the unconditional
        # branch, so its prompts are not encoded.
        guided = self.components.consistency is None and options.guidance != 1.0
        cond, uncond = self.components.conditioner.pair(batch.items, batch.negative_items, concat=concat,
                                                        unconditional=guided)
        timings["encode"] = time.perf_counter() - start  # the image inputs' encoding and the prompts'
        start = time.perf_counter()
        with tqdm(total=call.total_steps, desc="denoising", unit="step", disable=not progress) as bar:
            def on_step(info: dict[str, Any]) -> None:
                bar.update(1)
                if callback is not None:
                    callback(info)
                if interrupt is not None:
                    interrupt()

            latents = sample_latents(
                self.backend.for_sampling(self.precision), cond, uncond, callback=on_step,
                precision=self._autocast_precision, batch_size=len(batch), seed=options.seed, steps=options.steps,
                sampler=options.sampler, guidance=options.guidance, rescale=options.rescale,
                latent_size=call.size // self.components.autoencoder.downsampling_factor,
                strength=call.strength, sigmas=call.sigmas, **inputs)
        timings["denoise"] = time.perf_counter() - start
        start = time.perf_counter()
        images = self._decode(latents, interrupt)
        if call.finish is not None:
            images = call.finish(images, interrupt)
        timings["decode"] = time.perf_counter() - start
        described = self._metadata(len(batch), **batch.metadata_fields(), seed=options.seed, sampler=options.sampler,
                                   steps=options.steps, guidance=float(options.guidance),
                                   rescale=float(options.rescale), size=call.size, **call.metadata)
        return GenerationResult(images_to_pil(images), described, latents, timings)

    @property
    def _autocast_precision(self) -> str:
        """The precision PyTorch autocast runs in: the pipeline's, except on OpenVINO, which takes
        it as its own inference precision."""
        return self.precision if self.backend.autocast_precision else "fp32"

    def _metadata(self, count: int, **fields: Any) -> list[GenerationMetadata]:
        """One :class:`GenerationMetadata` per image of a batch of ``count``."""
        param = next(self.components.unet.parameters())
        common = dict(model_hash=self.model_hash, ldm_version=latent_diffusion.__version__,
                      device=str(param.device), dtype=str(param.dtype).removeprefix("torch."),
                      precision=self.precision, backend=self.backend.name, decoder=self.decoder, **fields)
        return [GenerationMetadata(index=i, **common) for i in range(count)]

    def _decode(self, latents: torch.Tensor, interrupt: Callable[[], None] | None = None) -> torch.Tensor:
        """Decoded images in [-1, 1], refusing non-finite output with a hint."""
        tiled = self.vae_tile is not None and max(latents.shape[-2:]) > self.vae_tile
        images = decode_images(self.backend.for_decoding(self.precision, tiled), latents, tile=self.vae_tile,
                               precision=self._autocast_precision, interrupt=interrupt)
        if not torch.isfinite(images).all():
            raise ValueError("the model produced NaN or infinite pixels; try dtype=torch.float32, "
                             "fewer steps or a lower guidance")
        return images


__all__ = ["DECODERS", "DEFAULT_MODEL_NAME", "DEFAULT_SAMPLING", "DEFAULT_UPSCALER_NAME", "MAX_SEED", "GenerationResult", "Pipeline",
           "PlannedCall", "PromptBatch", "SamplingOptions", "WrongModelError", "default_model_folder", "prompt_list"]
