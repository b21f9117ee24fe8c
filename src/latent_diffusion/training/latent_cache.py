"""Encode a dataset once with the frozen autoencoder (and frozen text encoder), then train on that.

The second stage trains only the UNet, so running the autoencoder's encoder (and MiniLM) at every
step would be wasted work. For KL autoencoders the cache keeps the posterior's mean and standard
deviation, so each step still draws a fresh latent ``mean + std * eps`` exactly as LDM's
``get_first_stage_encoding`` does; for VQ autoencoders it keeps the pre-quantization latents.
Text encodings of the fixed captions are cached once per unique caption, trimmed to the longest
real token count (the trimmed positions are padding, which has no effect under the mask).

Cache files live in the run folder, are named by a hash of everything that determines them
(autoencoder weights, data config, text encoder config), are written atomically and are
recomputed with a warning when unreadable.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.conditioning import Conditioner
from latent_diffusion.io import atomic_write_text, load_tensors, save_tensors


@dataclass
class LatentSet:
    """Cached first-stage encodings of a dataset: ``mean``/``std`` [N, C, h, w], captions, labels,
    and (when asked for) the images themselves as uint8, exactly as the dataset gave them.

    ``captions[i]`` lists item i's caption variants (one entry when captions are fixed); training
    picks one per step, so the model learns every wording while the text cache stays valid.
    """

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[list[str]]
    labels: torch.Tensor
    images: torch.Tensor | None = None  # uint8 [N, C, H, W], kept for image-conditioned models

    def pick_captions(self, index: torch.Tensor, choice: torch.Tensor) -> list[str]:
        """One caption per item of ``index``: variant ``choice % count`` of each."""
        picked = []
        for i, c in zip(index.tolist(), choice.tolist()):
            variants = self.captions[i]
            picked.append(variants[c % len(variants)])
        return picked

    def __len__(self) -> int:
        return self.mean.shape[0]

    def draw(self, index: torch.Tensor, noise: torch.Tensor, scale_factor: float) -> torch.Tensor:
        """Latents ``(mean + std * noise) * scale_factor`` of the items in ``index``."""
        return (self.mean[index] + self.std[index] * noise) * scale_factor


@dataclass
class TextCache:
    """Cached frozen text encodings: one row per unique caption, and the empty prompt's."""

    states: torch.Tensor  # [U, L, D]
    mask: torch.Tensor  # [U, L] bool
    row_of: dict[str, int]
    empty_states: torch.Tensor  # [1, L, D]
    empty_mask: torch.Tensor  # [1, L]

    def lookup(self, captions: list[str], dropped: torch.Tensor) -> dict[str, torch.Tensor]:
        """UNet kwargs for ``captions``, with the empty prompt where ``dropped`` is True."""
        rows = torch.tensor([self.row_of[c] for c in captions])
        keep = (~dropped).view(-1, 1, 1)
        states = torch.where(keep, self.states[rows], self.empty_states)
        mask = torch.where(keep[..., 0], self.mask[rows], self.empty_mask)
        return {"context": states, "context_mask": mask}


def cache_key(*parts: object) -> str:
    """Short stable hash of JSON-able parts."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        return load_tensors(path)
    except (ValueError, OSError) as err:
        warnings.warn(f"cache {str(path)!r} is unreadable ({err}); recomputing it", stacklevel=3)
        return None


def caption_variants(dataset: Dataset, index: int, fallback: str, all_variants: bool) -> list[str]:
    """Every caption variant of an item when asked for and the dataset has them, else its caption."""
    if all_variants and hasattr(dataset, "caption_variants"):
        return list(dataset.caption_variants(index))
    return [fallback]


def encode_dataset(autoencoder: Autoencoder, dataset: Dataset, path: Path, *, batch_size: int = 64,
                   num_workers: int = 0, device: str | torch.device = "cpu", show_progress: bool = True,
                   all_variants: bool = False, keep_images: bool = False) -> LatentSet:
    """Posterior moments of every item of ``dataset`` (read from ``path`` when cached there).

    ``all_variants``: keep every caption variant of each item (datasets with ``caption_variants``).
    ``keep_images``: also keep the images (uint8; the dataset's [-1, 1] pixels come from 8-bit
    files, so the round trip is exact).
    """
    cached = _read(path)
    captions_path = path.with_suffix(".json")
    if cached is not None and captions_path.exists() and (not keep_images or "images" in cached):
        meta = json.loads(captions_path.read_text())
        if meta.get("count") == cached["mean"].shape[0]:
            return LatentSet(cached["mean"], cached["std"], meta["captions"], cached["labels"],
                             cached.get("images"))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    means, stds, captions, labels, images = [], [], [], [], []
    autoencoder.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc="encoding latents", disable=not show_progress):
            posterior = autoencoder.encode(batch["image"].to(device))
            if hasattr(posterior, "std"):
                means.append(posterior.mean.float().cpu())
                stds.append(posterior.std.float().cpu())
            else:  # VQ: diffusion runs on pre-quantization latents, no sampling noise
                means.append(posterior.latent.float().cpu())
                stds.append(torch.zeros_like(means[-1]))
            start = len(captions)
            captions.extend(caption_variants(dataset, start + j, c, all_variants)
                            for j, c in enumerate(batch["caption"]))
            labels.append(batch["label"].long())
            if keep_images:
                images.append(((batch["image"].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    result = LatentSet(torch.cat(means), torch.cat(stds), captions, torch.cat(labels),
                       torch.cat(images) if keep_images else None)
    tensors = {"mean": result.mean, "std": result.std, "labels": result.labels}
    if keep_images:
        tensors["images"] = result.images
    save_tensors(path, tensors)
    atomic_write_text(captions_path, json.dumps({"count": len(result), "captions": captions}))
    return result


def encode_captions(conditioner: Conditioner, captions: list[list[str]], path: Path, *, batch_size: int = 128,
                    show_progress: bool = True) -> TextCache:
    """Frozen text encodings of every unique caption variant (read from ``path`` when cached there)."""
    unique = sorted({c for variants in captions for c in variants})
    cached = _read(path)
    if cached is not None and cached["states"].shape[0] == len(unique):
        return _text_cache(cached, unique)
    states, masks = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(unique), batch_size), desc="encoding captions", disable=not show_progress):
            encoding = conditioner.encode_text(unique[start:start + batch_size])
            states.append(encoding.states.float().cpu())
            masks.append(encoding.mask.cpu())
        empty = conditioner.encode_text([""])
    mask = torch.cat(masks)
    # Trim to the longest real prompt: the trimmed positions are masked padding everywhere.
    length = max(int(mask.sum(dim=1).max()), int(empty.mask.sum()))
    tensors = {
        "states": torch.cat(states)[:, :length],
        "mask": mask[:, :length],
        "empty_states": empty.states.float().cpu()[:, :length],
        "empty_mask": empty.mask.cpu()[:, :length],
    }
    save_tensors(path, tensors)
    return _text_cache(tensors, unique)


def _text_cache(tensors: dict[str, torch.Tensor], unique: list[str]) -> TextCache:
    return TextCache(
        states=tensors["states"],
        mask=tensors["mask"].bool(),
        row_of={caption: i for i, caption in enumerate(unique)},
        empty_states=tensors["empty_states"],
        empty_mask=tensors["empty_mask"].bool(),
    )
