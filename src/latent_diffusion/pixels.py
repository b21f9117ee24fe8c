"""Pixels: images in [-1, 1] as uint8 arrays, PIL images, grids and PNG files.

One place for the [-1, 1] -> uint8 map (``round((x + 1) * 127.5)``), which training grids,
pipelines and the CLI all use.

Grids are written without torchvision (which this project does not depend on). The layout matches
``torchvision.utils.make_grid``: tiles fill rows left to right, ``nrow`` tiles per row, with
``padding`` pixels of ``pad_value`` around and between them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latent_diffusion.io import atomic_write
from latent_diffusion.validation import check_choice, check_in_range, check_positive


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map values in [-1, 1] to uint8 in [0, 255]: ``round((x + 1) * 127.5)``.

    Values slightly outside [-1, 1] (a sampler's overshoot) are clamped, because a picture
    cannot show them; non-finite values raise, because they mean the model has diverged.
    """
    images = images.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values; expected finite values in [-1, 1]")
    return ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile ``images`` [N, C, H, W] (C = 1 or 3; floats in [-1, 1], or uint8 pixels taken as they
are) into a uint8 [H', W', C] array.

    ``nrow`` is the number of tiles per row; tile ``i`` sits at row ``i // nrow``, column
    ``i % nrow``, its top-left pixel at ``(padding + row * (H + padding), padding + col * (W + padding))``.
    Unused cells of the last row and all padding hold ``pad_value`` (0..255).
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    check_positive("images batch size", n)
    check_choice("images channels", c, (1, 3))
    check_positive("nrow", nrow)
    check_positive("padding", padding, allow_zero=True)
    check_in_range("pad_value", pad_value, 0, 255)
    cols = min(nrow, n)
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.uint8)
    pixels = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    tiles = pixels.permute(0, 2, 3, 1).numpy()  # NHWC
    for i, tile in enumerate(tiles):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[top : top + h, left : left + w] = tile
    return grid


def save_grid(path: str | Path, images: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Write ``make_grid(images, nrow, padding)`` as a PNG atomically; returns the grid array."""
    grid = make_grid(images, nrow=nrow, padding=padding)
    write_png(path, grid)
    return grid


def write_png(path: str | Path, picture: np.ndarray) -> None:
    """Atomically write a uint8 [H, W, C] array (C = 1 or 3) as a PNG."""
    if picture.dtype != np.uint8 or picture.ndim != 3 or picture.shape[-1] not in (1, 3):
        raise ValueError(f"picture must be uint8 [H, W, 1 or 3], got {picture.dtype} {picture.shape}")
    # PIL wants [H, W] for one-channel ("L") images.
    image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    # The temporary file has no .png suffix, so the format must be named explicitly.
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def images_to_pil(images: torch.Tensor) -> list:
    """[-1, 1] image tensors to PIL images (RGB, or L for one channel)."""
    pixels = to_uint8(images.cpu()).permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [Image.fromarray(p, mode="RGB") for p in pixels]


__all__ = ["images_to_pil", "make_grid", "save_grid", "to_uint8", "write_png"]
