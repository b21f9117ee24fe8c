"""Fréchet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Bińkowski et al. 2018).

Both compare two sets of features (normally :class:`~latent_diffusion.evaluation.inception.
InceptionFeatures`). All maths runs in float64 numpy: the 2048 x 2048 covariances lose several
digits of FID in float32.

FID fits a Gaussian to each set and returns the Fréchet (2-Wasserstein) distance between them,
``||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``. It is biased upwards for small sets (the
bias falls like 1/N); compare FIDs only at equal N, and below ~2048 images the covariances are
singular (handled, but the number is then mostly bias).

KID is the squared MMD with the polynomial kernel ``k(x, y) = (gamma x.y + coef0)^degree``,
``gamma = 1/dim`` by default, estimated without bias on random subsets; it is what
torch-fidelity and clean-fid compute, and unlike FID it is unbiased at small N.

:func:`fid_exact` (what ``ldm eval`` reports) computes FID without ``scipy.linalg.sqrtm``: sqrtm
of a 2048 x 2048 product takes 40-200 s on a small CPU, a symmetric eigen-decomposition ~3 s, and
with fewer images than feature dimensions the trace of the square root is the nuclear norm of an
``N1 x N2`` matrix (milliseconds). :func:`frechet_distance` (sqrtm) stays as the reference it is
tested against.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.linalg
import torch

ArrayLike = np.ndarray | torch.Tensor

# pytorch-fid's constants: the diagonal offset added when S1 S2 is singular, and how large an
# imaginary part of the square root's diagonal may be before it means a real numerical failure.
SINGULAR_OFFSET = 1e-6
IMAGINARY_TOLERANCE = 1e-3


def _as_float64(name: str, value: ArrayLike, ndim: int) -> np.ndarray:
    """Convert a tensor or array to a float64 numpy array with ``ndim`` dimensions."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, ``N - 1``) of features ``[N, D]``, in float64."""
    feats = _as_float64("features", features, 2)
    if feats.shape[0] < 2:
        raise ValueError(f"features has {feats.shape[0]} row(s); a covariance needs at least 2 images")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """Principal matrix square root; NaN/inf entries (not an exception) signal a singular input."""
    with warnings.catch_warnings():
        # scipy warns "Matrix is singular" for exactly the case the caller handles with an offset.
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(matrix)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Numerical handling follows pytorch-fid: if ``sqrtm(S1 S2)`` is not finite (singular
    product), retry with ``1e-6 * I`` added to both covariances; imaginary parts (round-off
    of a square root that is real in exact arithmetic) are dropped when the diagonal's are
    below 1e-3, otherwise a ``ValueError`` is raised since the result would be meaningless.
    """
    mu1, mu2 = _as_float64("mu1", mu1, 1), _as_float64("mu2", mu2, 1)
    sigma1, sigma2 = _as_float64("sigma1", sigma1, 2), _as_float64("sigma2", sigma2, 2)
    dim = mu1.shape[0]
    for name, value, shape in (("mu2", mu2, (dim,)), ("sigma1", sigma1, (dim, dim)), ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} has shape {value.shape}; with mu1 of shape {mu1.shape} it must be {shape}")
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: sqrtm(sigma1 @ sigma2) is singular; adding {SINGULAR_OFFSET} to the covariance diagonals",
            RuntimeWarning,
            stacklevel=2,
        )
        offset = np.eye(dim) * SINGULAR_OFFSET
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise ValueError(
                f"FID: sqrtm(sigma1 @ sigma2) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}; "
                "the covariances are not valid (too few images or non-finite features?)"
            )
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    """``(gamma * x @ y.T + coef0) ** degree``: the kernel matrix ``[len(x), len(y)]``."""
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices of two equal-size samples (torch-fidelity's estimator).

    Within-set terms leave out the diagonal (``k(x_i, x_i)``), since pairing a sample with itself
    biases them; the cross term keeps all ``m^2`` pairs, which is already unbiased.
    """
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(
    features1: ArrayLike,
    features2: ArrayLike,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of unbiased MMD^2 over ``subsets`` random subsets.

    Each subset draws ``subset_size`` rows without replacement from each set (numpy
    ``RandomState(seed)``, so the result is reproducible). Defaults are torch-fidelity's.
    """
    feats1 = _as_float64("features1", features1, 2)
    feats2 = _as_float64("features2", features2, 2)
    if feats1.shape[1] != feats2.shape[1]:
        raise ValueError(
            f"features1 has dimension {feats1.shape[1]} but features2 has {feats2.shape[1]}; they must match"
        )
    if subsets < 1:
        raise ValueError(f"subsets={subsets!r} must be >= 1")
    smallest = min(len(feats1), len(feats2))
    if not 2 <= subset_size <= smallest:
        raise ValueError(
            f"subset_size={subset_size!r} must lie in [2, {smallest}] (the smaller feature set has {smallest} rows)"
        )
    if degree < 1:
        raise ValueError(f"degree={degree!r} must be >= 1")
    gamma = 1.0 / feats1.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = feats1[rng.choice(len(feats1), subset_size, replace=False)]
        y = feats2[rng.choice(len(feats2), subset_size, replace=False)]
        k_xx = polynomial_kernel(x, x, degree, gamma, coef0)
        k_yy = polynomial_kernel(y, y, degree, gamma, coef0)
        k_xy = polynomial_kernel(x, y, degree, gamma, coef0)
        values.append(mmd2_unbiased(k_xx, k_yy, k_xy))
    return float(np.mean(values)), float(np.std(values))

# ---- exact FID without sqrtm, and FID + KID together (what ``ldm eval`` reports) ------------------

KID_SUBSET_SIZE = 1000  # torch-fidelity's default; capped by the number of images


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
