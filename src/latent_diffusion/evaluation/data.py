"""The images an evaluation reads: dataset splits at the model's resolution, their identity for the
feature cache, and deterministic index choices."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from latent_diffusion.data import build_dataset, data_root
from latent_diffusion.data.common import ImageCaptionDataset
from latent_diffusion.evaluation.settings import STYLED_DATA, EvalSettings


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
