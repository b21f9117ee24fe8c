"""The evaluation behind ``ldm eval``, as plain functions: load a model folder, score it, write JSON.

A *model folder* is either a full latent diffusion model (``model_index.json``, see
:mod:`latent_diffusion.model.folder`) or an autoencoder alone (``autoencoder.json`` +
``autoencoder.safetensors``, what ``ldm train autoencoder`` exports as ``runs/<name>/final``).

Metric groups (``EvalSettings.metrics``; empty = the default of the model kind):

* ``reconstruction``: PSNR, SSIM, perceptual distance, reconstruction FID and (VQ) codebook usage
  and perplexity of the (first-stage) autoencoder on the split's images. Default for autoencoders.
* ``fid``: FID and KID of ``num_samples`` generated images against the split's images. Prompts
  are the captions of randomly drawn split items (text models), their class labels (class
  models), or nothing (unconditional). Default for diffusion models.
* ``adherence``: retrieval prompt adherence of emoji text-to-image models
  (:mod:`latent_diffusion.evaluation.prompts`). Default for text models on ``emoji`` and
  ``emoji-styles``.
* ``composition``, ``memorization``, ``diversity``: generalization of ``emoji-styles`` text
  models - held-out (concept, style) pairs, copies of training pictures, seed diversity
  (:mod:`latent_diffusion.evaluation.emoji_styles`). Default for text models on ``emoji-styles``.

FID is exact and needs no sqrtm (:func:`~latent_diffusion.evaluation.fid.fid_exact`). FID on a few
hundred images is dominated by its upward bias (it falls like 1/N): compare FIDs only at equal N;
KID, reported beside it, is unbiased. The pieces this module puts together live beside it:
``settings`` (what decides the numbers), ``data`` (splits and their cache identity),
``generation`` (conditions and seeded noise streams), ``fid``, ``reconstruction``, ``prompts``
(adherence) and ``emoji_styles`` (generalization).

Reproducibility: items, noise and KID subsets all come from ``seed``; the same settings give
the same numbers (on the same machine and library versions).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import latent_diffusion
from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.autoencoder.tiny import TinyDecodedAutoencoder
from latent_diffusion.conditioning.conditioner import TEXT_KINDS
from latent_diffusion.data.common import ImageCaptionDataset
from latent_diffusion.evaluation.data import (  # noqa: F401  (part of this module's API)
    build_eval_dataset,
    cache_name,
    dataset_identity,
    drawn_indices,
    image_batches,
    progress_bar,
    spread_indices,
)
from latent_diffusion.evaluation.features_cache import FeatureSet, cached_dataset_features, extract_features
from latent_diffusion.evaluation.fid import (  # noqa: F401
    KID_SUBSET_SIZE,
    fid_exact,
    fid_kid,
    frechet_distance_eigh,
    trace_sqrt_product,
)
from latent_diffusion.evaluation.generation import (  # noqa: F401
    Conditions,
    derived_seed,
    features_of,
    generate_images,
    split_conditions,
)
from latent_diffusion.evaluation.reconstruction import evaluate_autoencoder
from latent_diffusion.evaluation.settings import (  # noqa: F401
    DEFAULT_DIFFUSION_SAMPLES,
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    METRIC_GROUPS,
    RESULT_FORMAT,
    STYLED_DATA,
    STYLES_GROUPS,
    EvalSettings,
    Extractor,
)
from latent_diffusion.hardware import resolve_device
from latent_diffusion.io import atomic_write_text, load_module
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.model.folder import INDEX_FILE, load_components, model_hash
from latent_diffusion.model.reverse_process import (  # noqa: F401
    DEFAULT_SPACING,
    check_consistency_call,
)


@dataclass
class LoadedModel:
    """A model folder under evaluation: its kind, identity and networks."""

    kind: Literal["diffusion", "autoencoder"]
    path: Path
    hash: str
    autoencoder: Autoencoder
    components: DiffusionComponents | None
    resolution: int
    index: dict[str, Any]

    @property
    def reconstructor(self) -> nn.Module:
        """What reconstruction is scored on: the autoencoder, or (a model with a tiny decoder, which
        then makes its pixels) the autoencoder's encoder with the tiny decoder."""
        tiny = None if self.components is None else self.components.tiny_decoder
        return self.autoencoder if tiny is None else TinyDecodedAutoencoder(self.autoencoder, tiny)

    @property
    def conditioner_kind(self) -> str | None:
        """"none", "minilm", "transformer", "clip", "class", or None for an autoencoder."""
        return None if self.components is None else self.components.conditioner.kind


def load_model(folder: str | Path, device: str = "cpu", resolution: int | None = None) -> LoadedModel:
    """Load a diffusion model folder or an autoencoder folder (see the module docstring)."""
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if (path / INDEX_FILE).is_file():
        components = load_components(path, device=device)
        if resolution is not None and resolution != components.resolution:
            raise ValueError(f"resolution={resolution} differs from the model's {components.resolution}; "
                             "a diffusion model is evaluated at its own resolution (omit --resolution)")
        index = json.loads((path / INDEX_FILE).read_text())
        return LoadedModel("diffusion", path, model_hash(path), components.autoencoder, components,
                           components.resolution, index)
    if (path / "autoencoder.json").is_file():
        autoencoder = load_module(Autoencoder, AutoencoderConfig, path, "autoencoder", device=device).eval()
        return LoadedModel("autoencoder", path, model_hash(path), autoencoder, None, resolution or 64, {})
    raise ValueError(f"{str(path)!r} is not a model folder: it has neither {INDEX_FILE} (a diffusion model) "
                     "nor autoencoder.json (an autoencoder from `ldm train autoencoder`)")


def resolve_settings(settings: EvalSettings, model: LoadedModel) -> EvalSettings:
    """Fill the defaults that depend on the model (metrics, N, guidance, spacing) and check the choice."""
    kind = model.conditioner_kind
    metrics = settings.metrics or default_metrics(model, settings.data)
    if model.kind == "autoencoder" and set(metrics) - {"reconstruction"}:
        raise ValueError(f"metrics={list(metrics)}: an autoencoder folder supports only 'reconstruction'")
    if "adherence" in metrics and (settings.data not in STYLED_DATA or kind not in TEXT_KINDS):
        raise ValueError(f"metrics 'adherence' needs a text-to-image model (conditioner {kind!r}) on data='emoji' "
                         f"or 'emoji-styles' (got data={settings.data!r})")
    for group in set(metrics) & set(STYLES_GROUPS):
        if settings.data != "emoji-styles" or kind not in TEXT_KINDS:
            raise ValueError(f"metrics {group!r} needs a text-to-image model (conditioner {kind!r}) on "
                             f"data='emoji-styles' (got data={settings.data!r})")
    num_samples = settings.num_samples
    if num_samples is None and model.kind == "diffusion":
        num_samples = DEFAULT_DIFFUSION_SAMPLES
    if "fid" in metrics and num_samples is not None and num_samples < 2:
        raise ValueError(f"num_samples={num_samples} must be >= 2 for FID/KID (they need a covariance)")
    guidance = settings.guidance
    consistency = model.components.consistency if model.components is not None else None
    if kind in ("none", None):
        if guidance not in (None, 1.0) and model.kind == "diffusion":
            raise ValueError(f"guidance={guidance} needs a conditional model; this one is unconditional (use 1)")
        guidance = 1.0
    elif guidance is None:
        guidance = DEFAULT_GUIDANCE if consistency is None else consistency.guidance
    # A latent consistency model is evaluated as it samples: lcm and its own steps unless told.
    sampler = settings.sampler or (DEFAULT_SAMPLER if consistency is None else "lcm")
    steps = settings.steps or (DEFAULT_STEPS if consistency is None else consistency.steps)
    if consistency is not None:
        check_consistency_call(model.components, sampler, steps, guidance)
    spacing = settings.spacing or DEFAULT_SPACING.get(sampler, "trailing")
    return settings.replace(metrics=tuple(metrics), num_samples=num_samples, guidance=guidance, spacing=spacing,
                            resolution=model.resolution, sampler=sampler, steps=steps)


def default_metrics(model: LoadedModel, data: str) -> tuple[str, ...]:
    """``reconstruction`` for autoencoders; ``fid`` (+ ``adherence`` for emoji text models, + the
    generalization groups for emoji-styles text models) otherwise."""
    if model.kind == "autoencoder":
        return ("reconstruction",)
    if data == "emoji-styles" and model.conditioner_kind in TEXT_KINDS:
        return ("fid", "adherence", *STYLES_GROUPS)
    if data == "emoji" and model.conditioner_kind in TEXT_KINDS:
        return ("fid", "adherence")
    return ("fid",)


# ------------------------------------------------------------------------------------ data


# ------------------------------------------------------------------------------------ FID / KID


def reference_features(dataset: ImageCaptionDataset, extractor: Extractor, settings: EvalSettings, channels: int,
                       cache_dir: str | Path | None, progress: bool) -> torch.Tensor:
    """Features of the split's reference images (from the feature cache when the extractor has a name)."""
    count = min(settings.num_reference or len(dataset), len(dataset))
    if count < 2:
        raise ValueError(f"the {settings.split!r} split has {len(dataset)} image(s); FID needs at least 2")
    indices = spread_indices(len(dataset), count)
    with progress_bar(count, "reference features", progress) as bar:
        batches = image_batches(dataset, indices, settings.batch_size, bar)
        if not isinstance(getattr(extractor, "name", None), str):
            return extract_features(extractor, batches)
        entry: FeatureSet = cached_dataset_features(
            extractor, batches, dataset=cache_name(settings, channels), split=settings.split,
            resolution=settings.resolution or 64, num_images=count, cache_dir=cache_dir)
    return entry.features


# ------------------------------------------------------------------------------------ generation


# ------------------------------------------------------------------------------------ reconstruction


def reconstruction_metrics(autoencoder: Autoencoder, dataset: ImageCaptionDataset, indices: Sequence[int],
                           extractor: Extractor | None, *, batch_size: int, perceptual: bool | Callable = True,
                           progress: bool = False) -> dict[str, Any]:
    """PSNR, SSIM, perceptual distance, rFID and codebook use over ``dataset[indices]`` (posterior mode)."""
    with progress_bar(len(indices), "reconstruct", progress) as bar:
        result = evaluate_autoencoder(autoencoder, image_batches(dataset, indices, batch_size, bar),
                                      sample_posterior=False, perceptual=perceptual, fid_extractor=extractor)
    return asdict(result)


# ------------------------------------------------------------------------------------ the evaluation


def default_extractor(device: str) -> Extractor:
    """The FID InceptionV3 (2048-d pool3 features) on ``device``."""
    from latent_diffusion.evaluation.inception import InceptionFeatures

    return InceptionFeatures().to(device)


def generation_metrics(components: DiffusionComponents, dataset: ImageCaptionDataset, settings: EvalSettings,
                       extractor: Extractor, reference: torch.Tensor, progress: bool) -> dict[str, Any]:
    """FID/KID of ``num_samples`` images generated from the split's captions/labels vs ``reference``."""
    count = settings.num_samples or DEFAULT_DIFFUSION_SAMPLES
    conditions = split_conditions(components, dataset, drawn_indices(len(dataset), count, settings.seed))
    images = generate_images(components, conditions, count, sampler=settings.sampler, steps=settings.steps,
                             guidance=settings.guidance or 1.0, seed=settings.seed, batch_size=settings.batch_size,
                             spacing=settings.spacing, progress=progress)
    fake = features_of(extractor, images, settings.batch_size)
    return fid_kid(reference, fake, settings.kid_subsets, settings.seed)


def evaluate(settings: EvalSettings, *, extractor: Extractor | None = None, embedder: Extractor | None = None,
             perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
             cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Run the evaluation ``settings`` describe and return the result (what ``ldm eval`` writes).

    ``extractor`` replaces the FID InceptionV3 (any callable images ``[B, C, H, W]`` in [-1, 1] ->
    features ``[B, D]``; give it a ``name`` string to cache reference features), ``embedder`` the
    adherence and generalization embedder (default EfficientNet-Lite0), ``perceptual`` the seed
    diversity's distance (default the LPIPS-style distance unless ``settings.perceptual`` is False).
    They exist so tests can run quickly; numbers
    from other extractors are not FIDs and are labelled with the extractor's name.
    ``cache_dir``: the feature cache (default ``~/.cache/latent-diffusion/features``).
    """
    started = time.perf_counter()
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model = load_model(settings.model, device, settings.resolution)
    settings = resolve_settings(settings, model)
    channels = model.autoencoder.config.in_channels
    dataset = build_eval_dataset(settings, channels)
    if extractor is None and {"reconstruction", "fid"} & set(settings.metrics):
        extractor = default_extractor(device)
    metrics: dict[str, Any] = {}
    notes: list[str] = []
    if "reconstruction" in settings.metrics:
        # Real images: --num-samples of an autoencoder folder, --num-reference of a diffusion model.
        cap = settings.num_samples if model.kind == "autoencoder" else settings.num_reference
        count = min(cap or len(dataset), len(dataset))
        metrics["reconstruction"] = reconstruction_metrics(
            model.reconstructor, dataset, spread_indices(len(dataset), count), extractor,
            batch_size=settings.batch_size, perceptual=settings.perceptual, progress=progress)
        notes += metrics["reconstruction"].pop("notes")
    if "fid" in settings.metrics:
        reference = reference_features(dataset, extractor, settings, channels, cache_dir, progress)
        metrics["generation"] = generation_metrics(model.components, dataset, settings, extractor, reference,
                                                   progress)
        notes.append(f"FID of {metrics['generation']['num_generated']} samples against "
                     f"{metrics['generation']['num_reference']} real images: biased upwards at small N "
                     "(compare only at equal N); KID is unbiased")
    if "adherence" in settings.metrics and settings.data == "emoji":
        from latent_diffusion.evaluation.prompts import emoji_adherence

        metrics["adherence"] = emoji_adherence(model.components, settings, embedder=embedder,
                                               cache_dir=cache_dir, progress=progress)
    styles_groups = tuple(g for g in settings.metrics if g in STYLES_GROUPS or
                          (g == "adherence" and settings.data == "emoji-styles"))
    if styles_groups:
        from latent_diffusion.evaluation.emoji_styles import styles_generalization
        from latent_diffusion.evaluation.reconstruction import default_perceptual

        if perceptual is None and settings.perceptual and "diversity" in styles_groups:
            perceptual = default_perceptual().to(device)
        metrics |= styles_generalization(model.components, settings, styles_groups, embedder=embedder,
                                         perceptual=perceptual, cache_dir=cache_dir, progress=progress)
    return {
        "format": RESULT_FORMAT,
        "version": 1,
        "model": model_summary(model),
        "settings": settings.to_dict(),
        "data": {"name": settings.data, "split": settings.split, "num_images": len(dataset),
                 "identity": dataset_identity(settings, channels)},
        "feature_extractor": getattr(extractor, "name", type(extractor).__name__) if extractor else None,
        "metrics": metrics,
        "notes": notes,
        "versions": {"latent_diffusion": latent_diffusion.__version__, "torch": torch.__version__,
                     "numpy": np.__version__},
        "elapsed_s": round(time.perf_counter() - started, 3),
    }


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """Path, kind, hash and the few facts that identify the evaluated model."""
    summary = {"path": str(model.path.resolve()), "kind": model.kind, "hash": model.hash,
               "resolution": model.resolution, "autoencoder_regularizer": model.autoencoder.config.regularizer}
    if model.components is not None:
        summary["conditioner"] = model.conditioner_kind
        summary["training_steps"] = model.index.get("training_steps")
    return summary


def _plain(value: Any) -> Any:
    """JSON-safe values: non-finite floats (e.g. the PSNR of exact reconstructions) as strings."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_metrics(path: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as indented strict JSON, atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_plain(result), indent=2, allow_nan=False) + "\n")
    return path
