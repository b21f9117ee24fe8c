"""Input images and masks of the image tasks: read, checked, and turned into tensors.

Images may be a path, a PIL image or a tensor. PIL images of any mode are converted the way the
training data was (transparency composited on white, then RGB or grey as the model expects);
tensors must already have the model's channel count. Masks follow diffusers' convention: white
(255) is repainted, black (0) is kept, and nothing in between. A mask must have its image's size,
so that "which pixels are kept" never depends on a resize.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

ImageInput = Any  # str | Path | PIL.Image.Image | torch.Tensor


def _open(value: str | Path, what: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; check the path")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except Image.DecompressionBombError as err:
        # Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS before decoding them.
        raise ValueError(f"{what} {str(path)!r} is too large to decode safely ({err}); pass a smaller "
                         "image") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{what} {str(path)!r} is not a readable image ({err}); pass a PNG or JPEG file") from err


def input_hash(value: ImageInput) -> str:
    """SHA-256 of a file's bytes, or of a PIL image's mode, size and pixels, or of a tensor."""
    digest = hashlib.sha256()
    if isinstance(value, (str, Path)):
        digest.update(Path(value).read_bytes())
    elif isinstance(value, torch.Tensor):
        digest.update(value.detach().cpu().float().numpy().tobytes())
    else:
        digest.update(f"{value.mode}:{value.size}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def to_model_mode(image: Any, channels: int) -> Any:
    """A PIL image in mode RGB (``channels`` 3) or L (1); transparency composited on white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB" if channels == 3 else "L")


def read_image(value: ImageInput, channels: int, what: str = "image") -> Any:
    """``value`` (path or PIL image) as a PIL image in the model's mode; tensors pass through checked."""
    if isinstance(value, torch.Tensor):
        return check_image_tensor(value, channels, what)
    if isinstance(value, (str, Path)):
        value = _open(value, what)
    if not hasattr(value, "convert") or not hasattr(value, "size"):
        raise ValueError(f"{what} must be a file path, a PIL image or a tensor, got {type(value).__name__}")
    return to_model_mode(value, channels)


def check_image_tensor(value: torch.Tensor, channels: int, what: str = "image") -> torch.Tensor:
    """A [C, H, W] or [1, C, H, W] tensor in [-1, 1] with the model's channel count, as [1, C, H, W]."""
    x = value.unsqueeze(0) if value.ndim == 3 else value
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{what} tensor has shape {tuple(value.shape)}; pass one image as [C, H, W] "
                         "or [1, C, H, W] with values in [-1, 1]")
    if x.shape[1] != channels:
        raise ValueError(f"{what} has {x.shape[1]} channels but the model makes {channels}-channel images; "
                         f"pass {'an RGB' if channels == 3 else 'a greyscale'} image")
    if not torch.isfinite(x).all() or float(x.abs().max()) > 1.0 + 1e-6:
        raise ValueError(f"{what} tensor values must be finite and in [-1, 1]")
    return x.float()


def image_size(image: Any) -> tuple[int, int]:
    """(width, height) of a PIL image or a [1, C, H, W] tensor."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return image.size


def check_square(image: Any, what: str = "image") -> None:
    """The models make square images; a non-square input is refused rather than distorted."""
    width, height = image_size(image)
    if width != height:
        raise ValueError(f"{what} is {width}x{height}, but this model works on square images; "
                         f"crop it to a square first (e.g. {min(width, height)}x{min(width, height)})")


def image_to_tensor(image: Any, size: int) -> torch.Tensor:
    """A PIL image or [1, C, H, W] tensor resized to ``size`` x ``size``, as [1, C, size, size] in [-1, 1]."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        if image.shape[-1] == size:
            return image
        return torch.nn.functional.interpolate(image, size=(size, size), mode="bicubic",
                                               antialias=True, align_corners=False).clamp(-1, 1)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def read_mask(value: ImageInput, image: Any) -> torch.Tensor:
    """The hole mask [1, 1, H, W] (1 = repaint, 0 = keep) at ``image``'s size, from a binary mask.

    A tensor mask holds 0 and 1; a mask image (any mode, converted to grey) holds 0 and 255.
    """
    what = "mask"
    if isinstance(value, torch.Tensor):
        mask = value.float()
        while mask.ndim < 4:
            mask = mask.unsqueeze(0)
        if mask.ndim != 4 or mask.shape[:2] != (1, 1):
            raise ValueError(f"mask tensor has shape {tuple(value.shape)}; pass [H, W], [1, H, W] or [1, 1, H, W]")
        allowed, scale = (0.0, 1.0), 1.0
    else:
        if isinstance(value, (str, Path)):
            value = _open(value, what)
        if not hasattr(value, "convert"):
            raise ValueError(f"mask must be a file path, a PIL image or a tensor, got {type(value).__name__}")
        mask = torch.from_numpy(np.asarray(value.convert("L"), dtype=np.float32))[None, None]
        allowed, scale = (0.0, 255.0), 255.0
    width, height = image_size(image)
    if (mask.shape[-1], mask.shape[-2]) != (width, height):
        raise ValueError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {width}x{height}; "
                         "make the mask at the image's size")
    odd = mask[(mask != allowed[0]) & (mask != allowed[1])]
    if odd.numel():
        raise ValueError(
            f"mask is not binary: {odd.numel()} pixels are neither {allowed[0]:g} nor {allowed[1]:g} "
            f"(e.g. {odd[0].item():g}); white = repaint, black = keep. Threshold it first, e.g. "
            "mask.point(lambda v: 255 if v >= 128 else 0)")
    hole = mask / scale
    if not bool(hole.any()):
        raise ValueError("mask is all black: nothing to repaint; paint the region to fill in white")
    return hole


def resize_mask(hole: torch.Tensor, size: int) -> torch.Tensor:
    """A hole mask resized to ``size`` with nearest-neighbour sampling, so it stays binary."""
    if hole.shape[-1] == size and hole.shape[-2] == size:
        return hole
    return torch.nn.functional.interpolate(hole, size=(size, size), mode="nearest-exact")


__all__ = ["check_image_tensor", "check_square", "image_size", "image_to_tensor", "input_hash", "read_image",
           "read_mask", "resize_mask", "to_model_mode"]
