"""Conditioning by concatenation (paper Sec. 3.3): images the UNet sees stacked onto its input.

Two kinds, each computed the same way in training and in the pipelines, so a model never meets
an input prepared differently from the ones it learned on:

* ``"masked_image"`` (inpainting, as Stable Diffusion's inpainting model): the hole mask at latent
  resolution (1 channel) and the latent of the image with the hole set to 0 (mid-grey),
  ``1 + latent channels`` in all.
* ``"low_res"`` (super-resolution, LDM-SR): the low-resolution image itself, resized to the latent
  grid when its side differs (with factor = the autoencoder's f it is already that size).

:func:`random_holes` draws the training masks: boxes, brush strokes, and now and then the whole
image (so the model also learns to draw from nothing, as SD's inpainting training did).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from latent_diffusion.autoencoder import Autoencoder

IMAGE_CONDITIONS = ("none", "masked_image", "low_res")


def concat_channels(kind: str, latent_channels: int, image_channels: int) -> int:
    """How many channels the UNet's ``concat`` input has for conditioning ``kind``."""
    return {"none": 0, "masked_image": 1 + latent_channels, "low_res": image_channels}[kind]


def masked_image_condition(autoencoder: Autoencoder, pixels: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """[mask at latent size, latent of the masked image]: ``[B, 1 + z, h, w]``.

    ``pixels`` [B, C, H, W] in [-1, 1]; ``hole`` [B, 1, H, W], 1 = to repaint. The mask is
    resized with torch's default "nearest", as Stable Diffusion's inpainting pipeline does, so
    converted SD inpainting models see the mask they were trained with.
    """
    param = next(autoencoder.parameters())
    masked = (pixels * (1 - hole)).to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        latent = autoencoder.encode_latents(masked)
    small = F.interpolate(hole.to(latent), size=latent.shape[-2:], mode="nearest")
    return torch.cat([small, latent], dim=1)


def degrade(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """The super-resolution training input: bicubic, antialiased downsampling by ``factor``."""
    if factor == 1:
        return pixels
    size = (pixels.shape[-2] // factor, pixels.shape[-1] // factor)
    return F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


def back_project(images: torch.Tensor, low_res: torch.Tensor, iterations: int = 3,
                 interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """Iterative back-projection (Irani & Peleg 1991): correct upscaled ``images`` so that
    :func:`degrade` gives back ``low_res``.

    Each round adds the bicubic upsampling of the residual ``low_res - degrade(images)``. The low
    frequencies, which the input determines, are pulled to it; the detail a model added (what
    degrading removes) is kept. A latent upscaler needs this because its autoencoder shifts
    colours and moves coarse shapes that the low-resolution input pins down. ``interrupt()`` is
    called before each round (raising there stops the work).
    """
    factor = images.shape[-1] // low_res.shape[-1]
    if factor * low_res.shape[-1] != images.shape[-1] or factor * low_res.shape[-2] != images.shape[-2]:
        raise ValueError(f"images of {tuple(images.shape[-2:])} are not a whole multiple of the low-resolution "
                         f"{tuple(low_res.shape[-2:])}")
    for _ in range(iterations):
        if interrupt is not None:
            interrupt()
        residual = low_res - degrade(images, factor)
        images = (images + F.interpolate(residual, size=images.shape[-2:], mode="bicubic",
                                         align_corners=False)).clamp(-1, 1)
    return images


def low_res_condition(low_res: torch.Tensor, latent_size: int) -> torch.Tensor:
    """The low-resolution image on the latent grid (bicubic when the sides differ)."""
    if low_res.shape[-1] == latent_size and low_res.shape[-2] == latent_size:
        return low_res
    return F.interpolate(low_res, size=(latent_size, latent_size), mode="bicubic", align_corners=False)


def _box(size: int, generator: torch.Generator) -> torch.Tensor:
    side = torch.randint(size // 4, 3 * size // 4 + 1, (2,), generator=generator).tolist()
    top = int(torch.randint(0, size - side[0] + 1, (1,), generator=generator))
    left = int(torch.randint(0, size - side[1] + 1, (1,), generator=generator))
    hole = torch.zeros(size, size)
    hole[top:top + side[0], left:left + side[1]] = 1
    return hole


def _strokes(size: int, generator: torch.Generator) -> torch.Tensor:
    """1-3 brush strokes: random walks of 4-8 segments painted with a round brush."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    hole = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
        radius = float(torch.empty(1).uniform_(size / 32, size / 10, generator=generator))
        y, x = (torch.rand(2, generator=generator) * size).tolist()
        for _ in range(int(torch.randint(4, 9, (1,), generator=generator))):
            angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
            length = float(torch.empty(1).uniform_(size / 8, size / 3, generator=generator))
            y2 = min(max(y + length * math.sin(angle), 0.0), size - 1.0)
            x2 = min(max(x + length * math.cos(angle), 0.0), size - 1.0)
            for t in torch.linspace(0, 1, 8).tolist():  # dabs along the segment
                cy, cx = y + t * (y2 - y), x + t * (x2 - x)
                hole |= (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
            y, x = y2, x2
    return hole.float()


def random_holes(batch: int, size: int, generator: torch.Generator, whole_prob: float = 0.1,
                 box_prob: float = 0.45) -> torch.Tensor:
    """Training hole masks ``[batch, 1, size, size]`` (1 = repaint): the whole image with
    ``whole_prob``, a box with ``box_prob``, brush strokes otherwise. Every mask has a hole."""
    kinds = torch.rand(batch, generator=generator)
    holes = []
    for kind in kinds.tolist():
        if kind < whole_prob:
            hole = torch.ones(size, size)
        elif kind < whole_prob + box_prob:
            hole = _box(size, generator)
        else:
            hole = _strokes(size, generator)
        holes.append(hole)
    return torch.stack(holes)[:, None]


__all__ = ["IMAGE_CONDITIONS", "back_project", "concat_channels", "degrade", "low_res_condition",
           "masked_image_condition", "random_holes"]
