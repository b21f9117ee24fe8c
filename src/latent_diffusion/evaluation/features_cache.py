"""Feature extraction over a dataloader, and an on-disk cache of a dataset split's features.

The reference side of FID/KID (the real images) is the same for every evaluation of a model,
and extracting 2048-d Inception features of thousands of images is most of an evaluation's CPU
time, so it is computed once and stored as safetensors: ``features`` ``[N, D]`` float32, and
their ``mu`` ``[D]`` / ``sigma`` ``[D, D]`` in float64.

The file name holds a SHA-256 of (dataset, split, resolution, number of images, extractor name),
so changing any of them misses the cache instead of silently reusing stale features. Files are
written atomically (:func:`latent_diffusion.io.save_tensors`). A file that cannot be trusted
(truncated, not safetensors, other key, wrong shapes, or a content digest that does not match)
is reported with a warning and recomputed: a cache must never crash an evaluation, and must
never feed it wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_diffusion.evaluation.fid import feature_statistics
from latent_diffusion.io import load_tensors, save_tensors

FORMAT_VERSION = "1"


def default_cache_dir() -> Path:
    """``~/.cache/latent-diffusion/features``."""
    return Path.home() / ".cache" / "latent-diffusion" / "features"


def images_from_batch(batch: Any) -> torch.Tensor:
    """The image tensor of a dataloader batch: a tensor, a dict's ``"image"``, or a tuple's first item."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"cannot find images in a batch of type {type(batch).__name__}; expected a tensor, "
        "a dict with an 'image' tensor, or a tuple/list whose first item is the image tensor"
    )


def extract_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Any],
    max_images: int | None = None,
) -> torch.Tensor:
    """Run ``extractor`` over the images of ``batches`` and return CPU features ``[N, D]``.

    Stops after ``max_images`` images (all when None); batches may be tensors, dicts with an
    ``"image"`` key, or tuples (see :func:`images_from_batch`).
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images={max_images!r} must be >= 1 or None")
    chunks: list[torch.Tensor] = []
    seen = 0
    for batch in batches:
        images = images_from_batch(batch)
        if max_images is not None:
            images = images[: max_images - seen]
        with torch.no_grad():
            chunks.append(extractor(images).detach().float().cpu())
        seen += images.shape[0]
        if max_images is not None and seen >= max_images:
            break
    if not chunks:
        raise ValueError("the dataloader yielded no images")
    return torch.cat(chunks)


@dataclass
class FeatureSet:
    """Features ``[N, D]`` of a set of images with their mean ``[D]`` and covariance ``[D, D]``."""

    features: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FeatureSet":
        """Compute the statistics of ``features`` (float64)."""
        features = features.detach().float().cpu()
        mu, sigma = feature_statistics(features)
        return cls(features=features, mu=mu, sigma=sigma)


def cache_fields(dataset: str, split: str, resolution: int, num_images: int, extractor: str) -> dict[str, str]:
    """The fields that identify a cache entry, as strings (also stored in the file's metadata)."""
    return {
        "format": FORMAT_VERSION,
        "dataset": str(dataset),
        "split": str(split),
        "resolution": str(int(resolution)),
        "num_images": str(int(num_images)),
        "extractor": str(extractor),
    }


def cache_path(cache_dir: str | Path, fields: dict[str, str]) -> Path:
    """``<cache_dir>/<dataset>-<split>-<resolution>-<hash>.safetensors`` (readable prefix, exact hash)."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{fields['dataset']}-{fields['split']}-{fields['resolution']}")
    return Path(cache_dir) / f"{prefix}-{digest}.safetensors"


def _content_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, shapes and bytes: detects bit rot that safetensors would not."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().contiguous().cpu()
        hasher.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        hasher.update(value.numpy().tobytes())
    return hasher.hexdigest()


def _read_entry(path: Path, fields: dict[str, str]) -> FeatureSet:
    """Load and verify a cache file; any problem raises ``ValueError`` with the reason."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_tensors(path)
    if set(tensors) != {"features", "mu", "sigma"}:
        raise ValueError(f"holds tensors {sorted(tensors)}, expected features, mu, sigma")
    stored = json.loads(metadata.get("fields", "{}"))
    if stored != fields:
        raise ValueError(f"was written for {stored}, not {fields}")
    if metadata.get("sha256") != _content_digest(tensors):
        raise ValueError("content digest does not match (the file was modified or damaged)")
    features, mu, sigma = tensors["features"], tensors["mu"], tensors["sigma"]
    n, dim = int(fields["num_images"]), features.shape[-1]
    if features.shape != (n, dim) or mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"has inconsistent shapes {tuple(features.shape)}, {tuple(mu.shape)}, {tuple(sigma.shape)}")
    return FeatureSet(features=features, mu=mu.numpy(), sigma=sigma.numpy())


def _write_entry(path: Path, fields: dict[str, str], entry: FeatureSet) -> None:
    tensors = {
        "features": entry.features.float().contiguous(),
        "mu": torch.from_numpy(np.ascontiguousarray(entry.mu, dtype=np.float64)),
        "sigma": torch.from_numpy(np.ascontiguousarray(entry.sigma, dtype=np.float64)),
    }
    metadata = {"fields": json.dumps(fields, sort_keys=True), "sha256": _content_digest(tensors)}
    save_tensors(path, tensors, metadata=metadata)


def cached_features(
    compute: Callable[[], torch.Tensor],
    *,
    dataset: str,
    split: str,
    resolution: int,
    num_images: int,
    extractor: str,
    cache_dir: str | Path | None = None,
) -> FeatureSet:
    """Features of a dataset split, read from the cache or computed with ``compute()`` and stored.

    ``compute`` must return exactly ``num_images`` rows (the number is part of the key, so a
    mismatch would poison the cache); a ``ValueError`` says so otherwise.
    """
    if num_images < 2:
        raise ValueError(f"num_images={num_images!r} must be >= 2 (statistics need a covariance)")
    fields = cache_fields(dataset, split, resolution, num_images, extractor)
    path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), fields)
    if path.exists():
        try:
            return _read_entry(path, fields)
        except Exception as err:  # noqa: BLE001 - any unreadable cache is recomputed, by design
            warnings.warn(f"feature cache {path} is unusable ({err}); recomputing it", RuntimeWarning, stacklevel=2)
    features = compute()
    if features.ndim != 2 or features.shape[0] != num_images:
        raise ValueError(
            f"compute() returned features of shape {tuple(features.shape)}; expected [{num_images}, dim] "
            f"for num_images={num_images}"
        )
    entry = FeatureSet.from_features(features)
    try:
        _write_entry(path, fields, entry)
    except OSError as err:
        # The cache only saves time; a full or read-only disk must not lose the evaluation.
        warnings.warn(f"could not write feature cache {path} ({err}); continuing without it",
                      RuntimeWarning, stacklevel=2)
    return entry


def cached_dataset_features(
    extractor: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Any],
    *,
    dataset: str,
    split: str,
    resolution: int,
    num_images: int,
    cache_dir: str | Path | None = None,
) -> FeatureSet:
    """:func:`cached_features` of the first ``num_images`` images of ``batches``.

    ``extractor.name`` (e.g. :attr:`InceptionFeatures.name`) is the extractor part of the key;
    the batches are only iterated when the cache misses.
    """
    name = getattr(extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"extractor {type(extractor).__name__} has no `name` string; the cache key needs one "
            "(it must change whenever the features would)"
        )
    return cached_features(
        lambda: extract_features(extractor, batches, max_images=num_images),
        dataset=dataset, split=split, resolution=resolution, num_images=num_images, extractor=name,
        cache_dir=cache_dir,
    )
