"""How well the first-stage autoencoder reconstructs images: PSNR, SSIM, perceptual distance, rFID.

The paper judges autoencoders by reconstruction FID (R-FID, Inception features of inputs vs
reconstructions), PSNR and perceptual scores (Table 8 and appendix); for VQ models the codebook
usage says how much of the codebook is alive. Everything here takes images in [-1, 1].

* PSNR = ``10 log10(range^2 / MSE)`` per image, ``range = 2`` for [-1, 1] images.
* SSIM is Wang et al. 2004 as scikit-image computes it with ``gaussian_weights=True,
  use_sample_covariance=False``: images mapped to [0, 1], an 11-tap Gaussian window with
  sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``, the SSIM map averaged over the pixels whose window
  lies inside the image (skimage crops 5 pixels of border), per channel, then over channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from latent_diffusion.evaluation.features_cache import images_from_batch
from latent_diffusion.evaluation.fid import fid_exact

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): skimage's truncate=3.5 -> an 11-tap window
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 4:
        raise ValueError(f"images must be shaped [batch, channels, height, width], got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"the two image batches have shapes {tuple(a.shape)} and {tuple(b.shape)}; they must be equal")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``[B]`` float64 (``inf`` for identical images)."""
    _check_pair(a, b)
    if data_range <= 0:
        raise ValueError(f"data_range={data_range!r} must be > 0 (2.0 for images in [-1, 1])")
    mse = (a.double() - b.double()).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> torch.Tensor:
    """Normalized 1-D Gaussian taps ``[2 * radius + 1]`` in float64 (as scipy's ``gaussian_filter``)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``[N, 1, H, W]`` keeping only fully covered pixels ("valid")."""
    k = taps.numel()
    x = nn.functional.conv2d(x, taps.view(1, 1, k, 1))
    return nn.functional.conv2d(x, taps.view(1, 1, 1, k))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, ``[B]`` float64, for images in [-1, 1] (see module doc).

    Filtering only the "valid" region gives exactly skimage's numbers: skimage filters with
    reflected borders but then discards the 5 border pixels those borders affect.
    """
    _check_pair(a, b)
    size = 2 * SSIM_RADIUS + 1
    if min(a.shape[-2:]) < size:
        raise ValueError(
            f"images are {a.shape[-2]}x{a.shape[-1]}; SSIM's {size}x{size} window needs at least {size}x{size}"
        )
    batch, channels, height, width = a.shape
    # [-1, 1] -> [0, 1]; channels become separate images so the filter runs per channel.
    x = ((a.double() + 1) / 2).reshape(batch * channels, 1, height, width)
    y = ((b.double() + 1) / 2).reshape(batch * channels, 1, height, width)
    taps = gaussian_window().to(x.device)
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1 after the mapping to [0, 1]
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).view(batch, channels).mean(dim=1)


@dataclass
class ReconstructionMetrics:
    """Dataset-level reconstruction scores of an autoencoder (means over ``num_images``).

    ``perceptual`` is None when not requested or when ``latent_diffusion.losses.perceptual`` is
    unavailable (``notes`` says which); ``rfid`` is None when not requested. ``posterior`` holds
    the image-weighted mean of every value of the posterior's ``stats()`` (per-batch numbers,
    e.g. KL, or the VQ loss and per-batch perplexity). ``codebook_usage`` (fraction of codes used
    at least once) and ``codebook_perplexity`` (exp of the entropy of the code histogram) are
    measured on the histogram of the whole evaluated set, so unlike the per-batch perplexity
    they do not shrink with small batches; None for non-VQ models.
    """

    num_images: int
    psnr: float
    ssim: float
    perceptual: float | None = None
    rfid: float | None = None
    posterior: dict[str, float] = field(default_factory=dict)
    codebook_usage: float | None = None
    codebook_perplexity: float | None = None
    notes: list[str] = field(default_factory=list)


def default_perceptual() -> nn.Module:
    """``latent_diffusion.losses.perceptual.PerceptualLoss()`` (imported lazily: it loads weights)."""
    from latent_diffusion.losses.perceptual import PerceptualLoss

    return PerceptualLoss()


def _per_image(values: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Per-image values ``[B]`` from a metric that returns ``[B, ...]`` or a batch mean (scalar)."""
    values = values.detach().double().cpu()
    if values.numel() == 1:
        return values.reshape(1).expand(batch)
    if values.shape[0] == batch:
        return values.reshape(batch, -1).mean(dim=1)
    raise ValueError(f"{name} returned shape {tuple(values.shape)}; expected a scalar or [{batch}, ...]")


def _codebook_size(autoencoder: nn.Module) -> int | None:
    """The ``codebook_size`` of the first submodule that has one (the VQ quantizer), else None."""
    for module in autoencoder.modules():
        size = getattr(module, "codebook_size", None)
        if isinstance(size, int):
            return size
    return None


def codebook_statistics(counts: torch.Tensor) -> tuple[float, float]:
    """(usage, perplexity) of a code histogram: used fraction and ``exp(-sum p log p)``."""
    probs = counts.double() / counts.sum()
    perplexity = math.exp(float(-torch.special.xlogy(probs, probs).sum()))
    return float((counts > 0).double().mean()), perplexity


class _Totals:
    """Running sums of everything :func:`evaluate_autoencoder` averages."""

    def __init__(self) -> None:
        self.n = 0
        self.sums: dict[str, float] = {}
        self.posterior: dict[str, float] = {}
        self.real: list[torch.Tensor] = []
        self.fake: list[torch.Tensor] = []
        self.codes: torch.Tensor | None = None

    def add(self, name: str, per_image: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(per_image.sum())

    def add_posterior(self, stats: dict[str, Any], batch: int) -> None:
        for key, value in stats.items():
            self.posterior[key] = self.posterior.get(key, 0.0) + float(value) * batch

    def add_codes(self, indices: torch.Tensor, codebook_size: int | None) -> None:
        flat = indices.reshape(-1).cpu().long()
        previous = self.codes.numel() if self.codes is not None else 0
        size = max(codebook_size or 0, int(flat.max()) + 1 if flat.numel() else 0, previous)
        counts = torch.bincount(flat, minlength=size)
        if self.codes is not None:
            counts[:previous] += self.codes
        self.codes = counts


@torch.no_grad()
def evaluate_autoencoder(
    autoencoder: nn.Module,
    batches: Iterable[Any],
    *,
    max_images: int | None = None,
    sample_posterior: bool = False,
    perceptual: bool | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = True,
    fid_extractor: Callable[[torch.Tensor], torch.Tensor] | None | bool = True,
) -> ReconstructionMetrics:
    """Reconstruction metrics of ``autoencoder`` over the images of ``batches`` (a dataloader).

    ``autoencoder(x, sample_posterior=...)`` must return ``(reconstruction, posterior)``;
    reconstructions are clamped to [-1, 1] (what a saved image would show) before scoring.
    ``perceptual``: True uses :func:`default_perceptual`, a callable ``(x, recon) -> distance``
    replaces it, False skips it. ``fid_extractor``: True builds
    :class:`~latent_diffusion.evaluation.inception.InceptionFeatures`, a callable replaces it,
    False/None skips rFID (which needs at least 2 images and is strongly biased below ~2k).
    Images go to the autoencoder's device; the model is put in eval mode and restored after.
    """
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images={max_images!r} must be >= 1 or None")
    totals, notes = _Totals(), []
    device = next(autoencoder.parameters()).device
    perceptual_fn = _to_device(_resolve_perceptual(perceptual, notes), device)
    extractor = _to_device(_resolve_extractor(fid_extractor), device)
    codebook_size = _codebook_size(autoencoder)
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        for batch in batches:
            x = images_from_batch(batch).to(device)
            if max_images is not None:
                x = x[: max_images - totals.n]
            _score_batch(autoencoder, x, sample_posterior, perceptual_fn, extractor, codebook_size, totals)
            if max_images is not None and totals.n >= max_images:
                break
    finally:
        autoencoder.train(was_training)
    if totals.n == 0:
        raise ValueError("the dataloader yielded no images")
    return _finish(totals, perceptual_fn is not None, extractor is not None, codebook_size, notes)


def _to_device(fn: Any, device: torch.device) -> Any:
    """Move a module-based metric next to the autoencoder (plain callables are left alone)."""
    return fn.to(device).eval() if isinstance(fn, nn.Module) else fn


def _resolve_perceptual(perceptual: Any,
                        notes: list[str]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    if perceptual is False or perceptual is None:
        return None
    if perceptual is True:
        try:
            return default_perceptual()
        except ImportError as err:
            notes.append(f"perceptual distance skipped: latent_diffusion.losses.perceptual is unavailable ({err})")
            return None
    return perceptual


def _resolve_extractor(fid_extractor: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if fid_extractor is False or fid_extractor is None:
        return None
    if fid_extractor is True:
        from latent_diffusion.evaluation.inception import InceptionFeatures

        return InceptionFeatures()
    return fid_extractor


def _score_batch(autoencoder: nn.Module, x: torch.Tensor, sample_posterior: bool, perceptual_fn: Any,
                 extractor: Any, codebook_size: int | None, totals: _Totals) -> None:
    """Reconstruct one batch and add its scores to ``totals``."""
    recon, posterior = autoencoder(x, sample_posterior=sample_posterior)
    recon = recon.float().clamp(-1, 1)
    x = x.float()
    batch = x.shape[0]
    totals.add("psnr", psnr(x, recon))
    totals.add("ssim", ssim(x, recon))
    if perceptual_fn is not None:
        totals.add("perceptual", _per_image(perceptual_fn(x, recon), batch, "perceptual"))
    if extractor is not None:
        totals.real.append(extractor(x).double().cpu())
        totals.fake.append(extractor(recon).double().cpu())
    if hasattr(posterior, "stats"):
        totals.add_posterior(posterior.stats(), batch)
    indices = getattr(posterior, "indices", None)
    if isinstance(indices, torch.Tensor):
        totals.add_codes(indices, codebook_size)
    totals.n += batch


def _finish(totals: _Totals, has_perceptual: bool, has_fid: bool, codebook_size: int | None,
            notes: list[str]) -> ReconstructionMetrics:
    n = totals.n
    metrics = ReconstructionMetrics(
        num_images=n,
        psnr=totals.sums["psnr"] / n,
        ssim=totals.sums["ssim"] / n,
        perceptual=totals.sums["perceptual"] / n if has_perceptual else None,
        posterior={key: value / n for key, value in totals.posterior.items()},
        notes=notes,
    )
    if has_fid:
        if n < 2:
            notes.append("rFID skipped: it needs at least 2 images")
        else:
            metrics.rfid = fid_exact(torch.cat(totals.real), torch.cat(totals.fake))
    if totals.codes is not None:
        usage, metrics.codebook_perplexity = codebook_statistics(totals.codes)
        if codebook_size is None:
            notes.append("codebook usage skipped: the model has no `codebook_size` attribute")
        else:
            metrics.codebook_usage = usage
    if not np.isfinite(metrics.psnr):
        notes.append("PSNR is infinite: some reconstructions are exact")
    return metrics
