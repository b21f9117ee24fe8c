"""What every dataset shares: the item format, image loading and resizing, splits, captions.

Item format. ``dataset[i]`` is a dict with

* ``image``: float32 tensor ``[C, H, W]`` in ``[-1, 1]`` (C = 3 for RGB, 1 for grey), square,
  ``H = W = resolution``;
* ``caption``: str (``""`` when the item has none);
* ``label``: int class index, ``-1`` when the dataset has no labels (``class_names`` is then None);
* dataset-specific fields (``style`` for emoji, ``key`` everywhere: a stable identity string).

Images. Transparent pixels are composited on white (emoji are drawn for a white page, and the
autoencoder sees no alpha channel). Resizing keeps the aspect ratio: the shorter side is scaled to
``resolution`` (Lanczos when shrinking, which low-passes like area averaging and avoids aliasing;
bicubic when enlarging), then the centre is cropped.

Splits. Every split is a pure function of item identity: an item is in ``validation`` when
``stable_fraction(key) < val_fraction`` (SHA-256 of the key, first 8 bytes, over 2**64). Nothing
depends on the order of files, the machine or a random seed, and growing ``val_fraction`` only
moves items from train to validation, never the other way. ``all`` is both splits together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from latent_diffusion.validation import check_choice, check_in_range, check_positive

SPLITS = ("train", "validation", "all")
CAPTION_MODES = ("full", "name", "variant", "random")
CaptionMode = Literal["full", "name", "variant", "random"]


def stable_fraction(key: str) -> float:
    """Map a string to [0, 1) with SHA-256: the same on every machine and Python version."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_split(key: str, split: str, val_fraction: float) -> bool:
    """Whether the item with identity ``key`` belongs to ``split`` (see the module docstring)."""
    check_choice("split", split, SPLITS)
    if split == "all":
        return True
    is_val = stable_fraction(key) < val_fraction
    return is_val if split == "validation" else not is_val


def check_split_args(split: str, val_fraction: float) -> None:
    """Validate a split name and a validation fraction."""
    check_choice("split", split, SPLITS)
    check_in_range("val_fraction", val_fraction, 0.0, 1.0)


def composite_on_white(image: Image.Image) -> Image.Image:
    """RGB image with any transparency composited over a white background."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_square(image: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` and centre-crop to a square."""
    width, height = image.size
    if (width, height) == (resolution, resolution):
        return image
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    shrinking = scale < 1
    resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
    image = image.resize(new_size, resample=resample)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image, resolution: int, channels: int) -> torch.Tensor:
    """PIL image -> float32 ``[channels, resolution, resolution]`` in [-1, 1], alpha on white."""
    rgb = composite_on_white(image)
    rgb = resize_square(rgb, resolution)
    if channels == 1:
        rgb = rgb.convert("L")
    array = np.asarray(rgb, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return tensor / 127.5 - 1.0


def grey_array_to_image(array: np.ndarray) -> Image.Image:
    """A ``uint8 [H, W]`` array (MNIST-style) as a greyscale PIL image."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a uint8 [H, W] array, got {array.dtype} {array.shape}")
    return Image.fromarray(array)  # a 2-D uint8 array is mode "L"


def choose_caption(variants: Sequence[str], mode: str, key: str) -> str:
    """Pick one caption: ``full``/``name`` are variants 0/1, ``variant`` a fixed hash choice per item,
    ``random`` a fresh choice on every call (caption augmentation, from torch's RNG so that
    DataLoader workers and ``torch.manual_seed`` control it)."""
    check_choice("caption_mode", mode, CAPTION_MODES)
    if not variants:
        return ""
    if mode == "full":
        return variants[0]
    if mode == "name":
        return variants[min(1, len(variants) - 1)]
    if mode == "variant":
        return variants[int(stable_fraction("caption:" + key) * len(variants))]
    return variants[int(torch.randint(len(variants), ()).item())]


def unique(items: Sequence[str]) -> list[str]:
    """Drop empty strings and repeats, keeping the first occurrence's order."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


class ImageCaptionDataset(torch.utils.data.Dataset):
    """Base of every dataset here: subclasses give images, caption variants, labels and keys.

    Subclasses implement ``__len__``, :meth:`load_image`, :meth:`caption_variants`,
    :meth:`label` and :meth:`key`; this class turns them into the item dict of the module docs.
    """

    class_names: tuple[str, ...] | None = None
    licence: str = ""

    def __init__(self, resolution: int, channels: int, caption_mode: str) -> None:
        check_positive("resolution", resolution)
        check_choice("channels", channels, (1, 3))
        check_choice("caption_mode", caption_mode, CAPTION_MODES)
        self.resolution = resolution
        self.channels = channels
        self.caption_mode = caption_mode

    def __len__(self) -> int:
        raise NotImplementedError

    def load_image(self, index: int) -> Image.Image:
        """The item's image at its native size (any PIL mode)."""
        raise NotImplementedError

    def caption_variants(self, index: int) -> list[str]:
        """All captions of the item, the fullest first, then the shortest (name only)."""
        raise NotImplementedError

    def label(self, index: int) -> int:
        """Class index, or -1 when the dataset has no labels."""
        return -1

    def key(self, index: int) -> str:
        """A stable identity string of the item (also what its split is decided by)."""
        raise NotImplementedError

    def extra(self, index: int) -> dict[str, Any]:
        """Dataset-specific fields added to the item."""
        return {}

    def caption(self, index: int) -> str:
        """The caption chosen for this item by ``caption_mode``."""
        return choose_caption(self.caption_variants(index), self.caption_mode, self.key(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self))
        item = {
            "image": image_to_tensor(self.load_image(index), self.resolution, self.channels),
            "caption": self.caption(index),
            "label": self.label(index),
            "key": self.key(index),
        }
        item.update(self.extra(index))
        return item


def check_index(index: int, length: int) -> int:
    """Validate an item index (negative counts from the end) and return it in ``[0, length)``."""
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of {length} items")
    return index % length


def relative_posix(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes (stable across operating systems)."""
    return path.relative_to(root).as_posix()


class LabelledGreyDataset(ImageCaptionDataset):
    """In-memory ``uint8 [N, H, W]`` images with one class label each (MNIST-style datasets).

    Subclasses fill ``images``, ``labels`` and ``item_keys`` and name their captions per label
    with :meth:`captions_for_label`.
    """

    images: np.ndarray
    labels: np.ndarray
    item_keys: list[str]

    def captions_for_label(self, label: int) -> list[str]:
        """Caption variants of a picture of class ``label``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        return grey_array_to_image(self.images[index])

    def caption_variants(self, index: int) -> list[str]:
        return self.captions_for_label(int(self.labels[index]))

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def key(self, index: int) -> str:
        return self.item_keys[index]


__all__ = [
    "CAPTION_MODES",
    "SPLITS",
    "ImageCaptionDataset",
    "LabelledGreyDataset",
    "check_index",
    "check_split_args",
    "choose_caption",
    "composite_on_white",
    "grey_array_to_image",
    "image_to_tensor",
    "in_split",
    "relative_posix",
    "resize_square",
    "stable_fraction",
    "unique",
]
