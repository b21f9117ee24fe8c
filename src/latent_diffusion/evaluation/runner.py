"""The evaluation behind ``ldm eval``, as plain functions: load a model folder, score it, write JSON.

A *model folder* is either a full latent diffusion model (``model_index.json``, see
:mod:`latent_diffusion.pipelines.components`) or an autoencoder alone (``autoencoder.json`` +
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

FID is computed exactly without ``scipy.linalg.sqrtm`` (:func:`fid_exact`): sqrtm of a 2048 x 2048
product takes 40-200 s on a small CPU, a symmetric eigen-decomposition ~3 s, and with fewer images
than feature dimensions the trace of the square root is the nuclear norm of an ``N1 x N2``
matrix (milliseconds). FID on a few hundred images is dominated by its upward bias (it falls like
1/N): compare FIDs only at equal N; KID, reported beside it, is unbiased.

Reproducibility: items, noise and KID subsets all come from ``seed``; the same settings give
the same numbers (on the same machine and library versions).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import latent_diffusion
from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.config import Config
from latent_diffusion.data import DATASET_NAMES, EMOJI_STYLES_SPLITS, build_dataset, data_root
from latent_diffusion.data.common import SPLITS, ImageCaptionDataset
from latent_diffusion.data.emoji import STYLES as EMOJI_STYLES
from latent_diffusion.data.emoji_styles.styles import check_styles
from latent_diffusion.evaluation.features_cache import FeatureSet, cached_dataset_features, extract_features
from latent_diffusion.evaluation.fid import feature_statistics, kid
from latent_diffusion.evaluation.reconstruction import evaluate_autoencoder
from latent_diffusion.hardware import resolve_device
from latent_diffusion.io import atomic_write_text, load_module
from latent_diffusion.pipelines.components import INDEX_FILE, DiffusionComponents, load_components, model_hash
from latent_diffusion.pipelines.generate import DEFAULT_SPACING, decode_images, sample_latents, text_conditions
from latent_diffusion.sampling import SAMPLERS
from latent_diffusion.sampling.discretization import SPACINGS
from latent_diffusion.validation import check_choice, check_positive

Extractor = Callable[[torch.Tensor], torch.Tensor]
STYLES_GROUPS = ("composition", "memorization", "diversity")  # emoji-styles text models only
METRIC_GROUPS = ("reconstruction", "fid", "adherence", *STYLES_GROUPS)
STYLED_DATA = ("emoji", "emoji-styles")  # the datasets with styles and skin tones
TEXT_KINDS = ("minilm", "transformer", "clip")
DEFAULT_DIFFUSION_SAMPLES = 256
DEFAULT_GUIDANCE = 4.0  # what training previews use (PreviewConfig.guidance)
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; capped by the number of images
RESULT_FORMAT = "latent-diffusion-eval"


@dataclass
class EvalSettings(Config):
    """Everything that decides the numbers of one evaluation (written into the result JSON).

    ``num_samples``: generated images for FID/KID (None = 256); for an autoencoder folder the
    number of images reconstructed (None = the whole split). ``num_reference``: real images of a
    diffusion model's evaluation, for FID/KID and reconstruction (None = the whole split), spread
    evenly over the split. ``resolution``: for
    autoencoder folders (default 64); a diffusion model has its own. ``guidance``: None = 4 for
    conditional models, 1 (no guidance) for unconditional ones. ``spacing``: None = the sampler's
    default (``pipelines.generate.DEFAULT_SPACING``).
    """

    model: str
    data: str = "emoji"
    data_path: str | None = None
    split: Literal["train", "validation", "composition", "all"] = "validation"
    val_fraction: float | None = None
    caption_mode: Literal["full", "name", "variant"] = "full"
    resolution: int | None = None
    num_samples: int | None = None
    num_reference: int | None = None
    metrics: tuple[str, ...] = ()
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float | None = None
    spacing: str | None = None
    seed: int = 0
    batch_size: int = 16
    adherence_prompts: int = 100
    kid_subsets: int = 100
    perceptual: bool = True
    device: str = "cpu"
    # emoji-styles generalization groups: samples checked for copies, prompts x seeds for diversity
    memorization_samples: int = 128
    diversity_prompts: int = 16
    diversity_seeds: int = 4
    # emoji and emoji-styles: the styles and whether skin-tone variants are in the split (None: all styles).
    # The adherence gallery always holds every emoji picture, whatever these say.
    styles: tuple[str, ...] | None = None
    skin_tones: bool = True

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATASET_NAMES)
        check_choice("split", self.split, EMOJI_STYLES_SPLITS if self.data == "emoji-styles" else SPLITS)
        check_choice("caption_mode", self.caption_mode, ("full", "name", "variant"))
        check_choice("sampler", self.sampler, sorted(SAMPLERS))
        if self.spacing is not None:
            check_choice("spacing", self.spacing, SPACINGS)
        for name in ("steps", "batch_size", "adherence_prompts", "kid_subsets", "memorization_samples",
                     "diversity_prompts"):
            check_positive(name, getattr(self, name))
        if self.diversity_seeds < 2:
            raise ValueError(f"diversity_seeds={self.diversity_seeds!r} must be >= 2 (diversity compares pairs)")
        if (self.styles is not None or not self.skin_tones) and self.data not in STYLED_DATA:
            raise ValueError(f"styles and skin_tones select emoji pictures; data={self.data!r} has neither")
        if self.data == "emoji-styles" and self.styles is not None:
            self.styles = check_styles(self.styles)
        for style in (self.styles or ()) if self.data == "emoji" else ():
            check_choice("styles", style, EMOJI_STYLES)
        for name in ("num_samples", "resolution"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.num_reference is not None and self.num_reference < 2:
            raise ValueError(f"num_reference={self.num_reference!r} must be >= 2 (FID needs a covariance)")
        if self.guidance is not None:
            check_positive("guidance", self.guidance, allow_zero=True)
        for group in self.metrics:
            check_choice("metrics", group, METRIC_GROUPS)
        if self.data == "imagefolder" and not self.data_path:
            raise ValueError("data_path is required for data='imagefolder': the folder of images")


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
    if kind in ("none", None):
        if guidance not in (None, 1.0) and model.kind == "diffusion":
            raise ValueError(f"guidance={guidance} needs a conditional model; this one is unconditional (use 1)")
        guidance = 1.0
    elif guidance is None:
        guidance = DEFAULT_GUIDANCE
    spacing = settings.spacing or DEFAULT_SPACING.get(settings.sampler, "trailing")
    return settings.replace(metrics=tuple(metrics), num_samples=num_samples, guidance=guidance, spacing=spacing,
                            resolution=model.resolution)


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


def build_eval_dataset(settings: EvalSettings, channels: int, split: str | None = None,
                       **options: Any) -> ImageCaptionDataset:
    """The dataset split the settings name, at the model's resolution and channel count."""
    extra = {"path": settings.data_path, "channels": channels, "caption_mode": settings.caption_mode}
    if settings.data in STYLED_DATA:
        extra.update(skin_tones=settings.skin_tones, **({"styles": settings.styles} if settings.styles else {}))
    extra.update(options)
    if settings.val_fraction is not None:
        extra["val_fraction"] = settings.val_fraction
    dataset = build_dataset(settings.data, split or settings.split, settings.resolution or 64, **extra)
    if len(dataset) == 0:
        raise ValueError(f"the {split or settings.split!r} split of {settings.data!r} is empty; "
                         "choose another --split or --val-fraction")
    return dataset


def dataset_identity(settings: EvalSettings, channels: int, what: str = "images") -> str:
    """A string naming exactly which images a dataset holds (written into the result JSON)."""
    path = str(Path(settings.data_path).resolve()) if settings.data_path else f"cache:{data_root()}"
    subset = ""
    if what != "gallery" and (settings.styles or not settings.skin_tones):  # old names stay valid
        subset = f";styles={','.join(settings.styles or ())};skin_tones={settings.skin_tones}"
    return f"{settings.data}[{what};path={path};channels={channels};val_fraction={settings.val_fraction}{subset}]"


def cache_name(settings: EvalSettings, channels: int, what: str = "images") -> str:
    """Short feature-cache name for :func:`dataset_identity`: readable prefix, digest of the rest
    (a long data path would otherwise make the cache file name too long for the file system)."""
    digest = hashlib.sha256(dataset_identity(settings, channels, what).encode()).hexdigest()[:12]
    return f"{settings.data}-{what}-{digest}"


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` distinct indices spread evenly over ``range(length)`` (all when count >= length).

    Datasets are ordered (emoji: by style, then Unicode order), so the first ``count`` items
    would be a biased subset; even spacing is deterministic without a seed, which keeps the
    reference features cacheable.
    """
    if count >= length:
        return list(range(length))
    return np.linspace(0, length - 1, count).round().astype(int).tolist()


def drawn_indices(length: int, count: int, seed: int) -> list[int]:
    """``count`` items drawn without replacement, repeating the split when ``count > length``."""
    rng = np.random.RandomState(seed)
    order: list[int] = []
    while len(order) < count:
        order += rng.permutation(length).tolist()
    return order[:count]


def image_batches(dataset: ImageCaptionDataset, indices: Sequence[int], batch_size: int,
                  bar: tqdm | None = None) -> Iterator[torch.Tensor]:
    """Stacked images ``[B, C, H, W]`` of ``dataset[indices]`` in chunks of ``batch_size``."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        yield torch.stack([dataset[i]["image"] for i in chunk])
        if bar is not None:
            bar.update(len(chunk))


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr (hidden when ``enabled`` is False)."""
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr, dynamic_ncols=True)


# ------------------------------------------------------------------------------------ FID / KID


def _centred(features: np.ndarray) -> np.ndarray:
    return (features - features.mean(axis=0)) / np.sqrt(features.shape[0] - 1)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr sqrt(S1 S2)`` for symmetric PSD matrices, by two symmetric eigen-decompositions.

    ``S1 S2`` is similar to ``S1^1/2 S2 S1^1/2`` (symmetric PSD), so its square root's trace is
    the sum of the square roots of that matrix's eigenvalues; no non-symmetric sqrtm is needed.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)  # symmetrize away round-off
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance_eigh(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)`` via :func:`trace_sqrt_product`.

    Exact for singular covariances too, so unlike pytorch-fid no diagonal offset is ever added.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_exact(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets ``[N1, D]`` and ``[N2, D]``, computed exactly in float64.

    With ``S1 = A^T A`` and ``S2 = B^T B`` (A, B the centred features over ``sqrt(N - 1)``), the
    non-zero eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T``, so
    ``tr sqrt(S1 S2)`` is the nuclear norm of that ``N1 x N2`` matrix: cheap whenever an image set
    is smaller than the feature dimension (the usual case here). Otherwise the eigen route.
    """
    a = np.asarray(features1.double().cpu().numpy() if isinstance(features1, torch.Tensor) else features1, np.float64)
    b = np.asarray(features2.double().cpu().numpy() if isinstance(features2, torch.Tensor) else features2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
    if min(len(a), len(b)) >= a.shape[1]:
        mu1, sigma1 = feature_statistics(a)
        mu2, sigma2 = feature_statistics(b)
        return frechet_distance_eigh(mu1, sigma1, mu2, sigma2)
    ca, cb = _centred(a), _centred(b)
    diff = a.mean(axis=0) - b.mean(axis=0)
    nuclear = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum())
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2.0 * nuclear)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, kid_subsets: int, seed: int) -> dict[str, Any]:
    """FID and KID (mean, std over subsets) of ``fake`` features against ``real`` features."""
    subset = min(KID_SUBSET_SIZE, len(real), len(fake))
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, subset_size=subset, seed=seed)
    return {"fid": fid_exact(real, fake), "kid": kid_mean, "kid_std": kid_std, "kid_subset_size": subset,
            "kid_subsets": kid_subsets, "num_generated": len(fake), "num_reference": len(real)}


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


@dataclass
class Conditions:
    """What each generated image is conditioned on: prompts, class labels, or nothing."""

    prompts: list[str] | None = None
    labels: list[int] | None = None

    def batch(self, components: DiffusionComponents, start: int, stop: int) -> tuple[dict, dict | None]:
        """UNet kwargs (cond, uncond) of items ``start:stop``."""
        conditioner = components.conditioner
        if self.prompts is not None:
            return text_conditions(components, self.prompts[start:stop])
        if self.labels is not None:
            with torch.no_grad():
                labels = self.labels[start:stop]
                return conditioner(labels=labels), conditioner.unconditional(len(labels))
        return {}, None


def split_conditions(components: DiffusionComponents, dataset: ImageCaptionDataset,
                     indices: Sequence[int]) -> Conditions:
    """Captions (text models) or labels (class models) of ``dataset[indices]``; none if unconditional."""
    kind = components.conditioner.kind
    if kind in TEXT_KINDS:
        return Conditions(prompts=[dataset.caption(i) for i in indices])
    if kind == "class":
        classes = components.conditioner.config.num_classes
        names = dataset.class_names
        if names is None or len(names) != classes:
            raise ValueError(f"the model has {classes} classes but the dataset has "
                             f"{'no labels' if names is None else f'{len(names)} classes'}; evaluate it on "
                             "the dataset it was trained on")
        labels = [dataset.label(i) for i in indices]
        if min(labels) < 0:
            raise ValueError("some items of the split have no label (-1); a class model needs labelled items")
        return Conditions(labels=labels)
    return Conditions()


def derived_seed(seed: int, stream: str, index: int) -> int:
    """A seed for batch ``index`` of the random stream ``stream`` (SHA-256: streams never overlap)."""
    digest = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def generate_images(components: DiffusionComponents, conditions: Conditions, count: int, *, sampler: str,
                    steps: int, guidance: float, seed: int, batch_size: int, spacing: str | None = None,
                    stream: str = "fid", progress: bool = False) -> torch.Tensor:
    """``count`` images ``[N, C, H, W]`` in [-1, 1] (CPU float32); batch ``b`` uses noise seed
    ``derived_seed(seed, stream, b)``, so equal settings give equal images."""
    check_positive("count", count)
    images = []
    with progress_bar(count, f"generate ({stream})", progress) as bar:
        for number, start in enumerate(range(0, count, batch_size)):
            stop = min(start + batch_size, count)
            cond, uncond = conditions.batch(components, start, stop)
            latents = sample_latents(components, cond, uncond, batch_size=stop - start,
                                     seed=derived_seed(seed, stream, number), steps=steps, sampler=sampler,
                                     guidance=guidance, spacing=spacing)
            images.append(decode_images(components, latents).cpu())
            bar.update(stop - start)
    return torch.cat(images)


def features_of(extractor: Extractor, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Extractor features of an image tensor, in chunks (CPU float32)."""
    return extract_features(extractor, images.split(batch_size))


# ------------------------------------------------------------------------------------ reconstruction


class FeatureTap(nn.Module):
    """Wraps an autoencoder for :func:`evaluate_autoencoder` and records extractor features of every
    input and (clamped) reconstruction, so rFID can use :func:`fid_exact` instead of scipy's sqrtm."""

    def __init__(self, autoencoder: nn.Module, extractor: Extractor) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.extractor = extractor
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, sample_posterior: bool = False) -> tuple[torch.Tensor, Any]:
        """``autoencoder(x)``, recording features of ``x`` and of the reconstruction."""
        recon, posterior = self.autoencoder(x, sample_posterior=sample_posterior)
        with torch.no_grad():
            self.real.append(self.extractor(x).detach().double().cpu())
            self.fake.append(self.extractor(recon.float().clamp(-1, 1)).detach().double().cpu())
        return recon, posterior


def reconstruction_metrics(autoencoder: Autoencoder, dataset: ImageCaptionDataset, indices: Sequence[int],
                           extractor: Extractor | None, *, batch_size: int, perceptual: bool | Callable = True,
                           progress: bool = False) -> dict[str, Any]:
    """PSNR, SSIM, perceptual distance, rFID and codebook use over ``dataset[indices]`` (posterior mode)."""
    tap = FeatureTap(autoencoder, extractor) if extractor is not None else autoencoder
    with progress_bar(len(indices), "reconstruct", progress) as bar:
        result = evaluate_autoencoder(tap, image_batches(dataset, indices, batch_size, bar),
                                      sample_posterior=False, perceptual=perceptual, fid_extractor=False)
    metrics = asdict(result)
    if isinstance(tap, FeatureTap):
        if result.num_images >= 2:
            metrics["rfid"] = fid_exact(torch.cat(tap.real), torch.cat(tap.fake))
        else:
            metrics["notes"].append("rFID skipped: it needs at least 2 images")
    return metrics


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
            model.autoencoder, dataset, spread_indices(len(dataset), count), extractor,
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
