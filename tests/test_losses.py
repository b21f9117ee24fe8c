"""Tests of the first-stage losses: perceptual distance, PatchGAN, adaptive weight, full loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.io import load_module, save_module
from latent_diffusion.losses import (
    AutoencoderLoss,
    AutoencoderLossConfig,
    FeatureExtractor,
    PatchDiscriminator,
    PerceptualLoss,
    available_backbones,
    build_backbone,
    generator_adversarial_loss,
    hinge_d_loss,
    register_backbone,
    vanilla_d_loss,
)
from latent_diffusion.losses.backbones import RandomConvFeatures, efficientnet_lite0_weights_path


def smooth_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A deterministic natural-ish RGB image in [-1, 1]: gradients, waves and soft blobs."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    channels = []
    for _ in range(3):
        a, b, c = torch.rand(3, generator=g) * 6
        img = 0.4 * torch.sin(a * xs + b * ys + c) + 0.3 * (xs - ys)
        for _ in range(4):
            cx, cy, s, amp = torch.rand(4, generator=g)
            blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (0.02 + 0.05 * s))
            img = img + (amp - 0.5) * blob
        channels.append(img)
    return torch.stack(channels)[None].clamp(-1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, two threads per process thrash (this
    module took 45-90 s with 2 threads under load and 7 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lite0() -> FeatureExtractor:
    return build_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def perceptual(lite0: FeatureExtractor) -> PerceptualLoss:
    return PerceptualLoss(lite0)


# --- backbones -------------------------------------------------------------------------------


def test_pretrained_weights_equal_the_weight_file(lite0: FeatureExtractor) -> None:
    path = efficientnet_lite0_weights_path()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    loaded = lite0.net.state_dict()
    assert set(loaded) == set(file_state)
    for key, tensor in file_state.items():
        assert torch.equal(loaded[key], tensor), key


def test_lite0_features_match_the_package_forward(lite0: FeatureExtractor) -> None:
    # Our block walk must reproduce the package's own forward; inputs in [-1, 1] reach the
    # network unchanged (mean 0.5, std 0.5 in [0, 1] units).
    x = smooth_image(64)
    seen: dict[object, torch.Tensor] = {}

    def keep(key: object):  # a hook that returns None, so it does not replace the output
        return lambda module, args, out: seen.__setitem__(key, out)

    hooks = [lite0.net._bn0.register_forward_hook(keep("stem"))]
    hooks += [lite0.net._blocks[i].register_forward_hook(keep(i)) for i in lite0.taps]
    with torch.no_grad():
        lite0.net.extract_features(x)
        for h in hooks:
            h.remove()
        seen_stem = lite0.net._swish(seen["stem"])
        ours = lite0(x)
    reference = [seen_stem] + [seen[i] for i in lite0.taps]
    assert [f.shape[1] for f in ours] == list(lite0.channels) == [32, 24, 40, 112, 320]
    assert [f.shape[-1] for f in ours] == [32, 16, 8, 4, 2]
    # each tap is the last block at its resolution (the next block down-samples, or none is left)
    blocks = lite0.net._blocks
    assert lite0.taps[-1] == len(blocks) - 1
    assert all(list(blocks[i + 1]._block_args.stride) == [2] for i in lite0.taps[:-1])
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # (x + 1) / 2 rounding


def test_backbone_is_frozen_and_stays_in_eval(lite0: FeatureExtractor) -> None:
    assert all(not p.requires_grad for p in lite0.parameters())
    wrapper = nn.ModuleDict({"backbone": lite0}).train()
    assert wrapper.training
    assert not lite0.training and not any(m.training for m in lite0.modules())


def test_random_conv_is_deterministic_and_unknown_names_are_listed() -> None:
    torch.manual_seed(123)
    a = RandomConvFeatures()
    torch.manual_seed(456)
    b = RandomConvFeatures()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="random-conv"):
        build_backbone("vgg16")


def test_register_backbone() -> None:
    register_backbone("test-random-conv-seed1", lambda: RandomConvFeatures(seed=1), overwrite=True)
    assert "test-random-conv-seed1" in available_backbones()
    built = build_backbone("test-random-conv-seed1")
    assert not built.training and not any(p.requires_grad for p in built.parameters())
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test-random-conv-seed1", RandomConvFeatures)
    register_backbone("test-not-a-backbone", lambda: nn.Identity(), overwrite=True)
    with pytest.raises(ValueError, match="not a FeatureExtractor"):
        build_backbone("test-not-a-backbone")


# --- perceptual distance ---------------------------------------------------------------------


def test_distance_to_itself_is_zero_and_positive_otherwise(perceptual: PerceptualLoss) -> None:
    x = torch.cat([smooth_image(64, 0), smooth_image(64, 1)])
    y = torch.cat([smooth_image(64, 2), smooth_image(64, 3)])
    with torch.no_grad():
        same = perceptual(x, x)
        diff = perceptual(x, y)
    assert same.shape == (2,)
    assert torch.equal(same, torch.zeros(2))
    assert (diff > 0.05).all()


def test_distance_is_symmetric(perceptual: PerceptualLoss) -> None:
    x, y = smooth_image(64, 4), smooth_image(64, 5)
    with torch.no_grad():
        torch.testing.assert_close(perceptual(x, y), perceptual(y, x))


def test_distance_grows_with_noise_level(perceptual: PerceptualLoss) -> None:
    x = smooth_image(64, 6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    sigmas = [0.02, 0.05, 0.1, 0.2, 0.4]
    batch = torch.cat([x + s * noise for s in sigmas])
    with torch.no_grad():
        d = perceptual(x.expand(len(sigmas), -1, -1, -1), batch)
    assert (d[1:] > d[:-1]).all(), d
    # each layer term lies in [0, 4]; their mean too
    assert 0 < d[0] and d[-1] < 4


def test_gradients_reach_the_input_not_the_backbone(perceptual: PerceptualLoss) -> None:
    x = smooth_image(64, 7)
    y = (smooth_image(64, 8)).requires_grad_(True)
    perceptual(x, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())


def test_grey_and_small_inputs(perceptual: PerceptualLoss) -> None:
    grey_a, grey_b = smooth_image(32, 9)[:, :1], smooth_image(32, 10)[:, :1]
    assert perceptual.target_size(32, 32) == (64, 64)
    assert perceptual.target_size(64, 96) == (64, 96)
    assert perceptual.target_size(32, 48) == (64, 96)
    with torch.no_grad():
        got = perceptual(grey_a, grey_b)
        rgb = [
            F.interpolate(t.repeat(1, 3, 1, 1), size=(64, 64), mode="bilinear", align_corners=False)
            for t in (grey_a, grey_b)
        ]
        want = perceptual(*rgb)
    torch.testing.assert_close(got, want)


def test_fixed_resize_and_bad_inputs(lite0: FeatureExtractor) -> None:
    fixed = PerceptualLoss(lite0, resize=96)
    assert fixed.target_size(128, 256) == (96, 192)
    assert fixed.target_size(64, 64) == (96, 96)
    with pytest.raises(ValueError, match="resize=32"):
        PerceptualLoss(lite0, resize=32)
    x = smooth_image(64)
    with pytest.raises(ValueError, match="differ in shape"):
        fixed(x, x[..., :32])
    with pytest.raises(ValueError, match="1 or 3"):
        fixed(x[:, :2], x[:, :2])
    with pytest.raises(ValueError, match="expected"):
        fixed(x[0], x[0])


def test_bf16_autocast_is_close_to_fp32(perceptual: PerceptualLoss) -> None:
    x, y = smooth_image(64, 11), smooth_image(64, 12)
    with torch.no_grad():
        full = perceptual(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = perceptual(x, y)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.01)


def test_perceptual_state_dict_leaves_out_the_backbone(perceptual: PerceptualLoss) -> None:
    assert perceptual.state_dict() == {}
    before = perceptual.backbone.net._conv_stem.weight.clone()
    # A checkpoint that (wrongly) holds backbone weights cannot overwrite the pretrained ones.
    bogus = {"backbone.net._conv_stem.weight": torch.zeros_like(before)}
    perceptual.load_state_dict(bogus, strict=True)
    assert torch.equal(perceptual.backbone.net._conv_stem.weight, before)


# --- discriminator ---------------------------------------------------------------------------


def test_discriminator_shapes_and_receptive_field() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=3, base_channels=8, num_layers=3).eval()
    assert disc.receptive_field() == 70
    assert PatchDiscriminator(base_channels=4, num_layers=1).receptive_field() == 16
    assert PatchDiscriminator(base_channels=4, num_layers=2).receptive_field() == 34
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert disc.output_size(256, 256) == (30, 30)  # LDM's 30x30 patches at 256 px
    # Empirical receptive field: the input region one logit's gradient touches (eval mode, so
    # batch norm does not couple positions).
    x = torch.randn(1, 3, 160, 160, requires_grad=True)
    logits = disc(x)
    logits[0, 0, logits.shape[-2] // 2, logits.shape[-1] // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3)))
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)))
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_discriminator_init_and_bad_input() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(base_channels=64, num_layers=3)
    big = disc.main[8].weight  # 256 -> 512 channels, 4x4: 2M values
    assert abs(big.mean().item()) < 1e-3 and abs(big.std().item() - 0.02) < 1e-3
    norms = [m for m in disc.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 3 and all(abs(m.weight.mean().item() - 1) < 0.01 for m in norms)
    assert disc.main[2].bias is None  # no bias before batch norm
    group = PatchDiscriminator(base_channels=8, norm="group")
    assert sum(isinstance(m, nn.GroupNorm) for m in group.modules()) == 3
    with pytest.raises(ValueError, match="1 channels but the model expects 3"):
        disc(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 24 px"):
        disc(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="norm="):
        PatchDiscriminator(norm="instance")  # type: ignore[arg-type]


def test_gan_losses_closed_form() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, .5, 2] (mean 5/6); relu(1 + fake) = [0, 1, 2.5] (mean 7/6)
    assert hinge_d_loss(real, fake).item() == pytest.approx(1.0)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in real.tolist()) / 3 + sum(sp(f) for f in fake.tolist()) / 3)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(want, rel=1e-6)
    assert generator_adversarial_loss(fake).item() == pytest.approx(0.1666667, rel=1e-5)


# --- autoencoder loss ------------------------------------------------------------------------


def tiny_config(**changes: object) -> AutoencoderLossConfig:
    base = dict(perceptual_backbone="random-conv", disc_base_channels=8, disc_num_layers=2,
                disc_start=10, disc_weight=0.5, disc_norm="group")
    base.update(changes)
    return AutoencoderLossConfig(**base)  # type: ignore[arg-type]


class LinearDecoder(nn.Module):
    """rec = W z reshaped to an image: the gradient at W has a closed form."""

    def __init__(self, latent: int = 5, size: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.size = size
        self.weight = nn.Parameter(0.1 * torch.randn(3 * size * size, latent, generator=g))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T).view(-1, 3, self.size, self.size)


def test_adaptive_weight_equals_hand_computed_grad_norms() -> None:
    loss_fn = AutoencoderLoss(tiny_config(perceptual_weight=0.0))
    dec = LinearDecoder()
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 5, generator=g)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    v = torch.randn(2, 3, 32, 32, generator=g)  # a linear "discriminator"
    rec = dec(z)
    n = x.numel()
    rec_loss = (x - rec).abs().mean()
    g_loss = -(v * rec).mean()
    # d rec_loss / dW = sign(rec - x)_flat^T z / n; d g_loss / dW = -v_flat^T z / n
    grad_rec = (rec - x).sign().view(2, -1).T @ z / n
    grad_g = -v.view(2, -1).T @ z / n
    want = 0.5 * grad_rec.norm() / (grad_g.norm() + 1e-4)
    got = loss_fn.adaptive_weight(rec_loss, g_loss, dec.weight)
    assert not got.requires_grad
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # clamp at adaptive_weight_max when the adversarial gradient vanishes
    tiny = loss_fn.adaptive_weight(rec_loss * 1e6, g_loss * 0.0 + 0 * dec.weight.sum(), dec.weight)
    assert tiny.item() == pytest.approx(0.5 * 1e4)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, LinearDecoder, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    dec = LinearDecoder()
    rec = dec(torch.randn(2, 5, generator=g))
    return x, dec, rec


def test_before_disc_start_there_is_no_adversarial_term() -> None:
    loss_fn = AutoencoderLoss(tiny_config())
    x, dec, rec = _inputs()
    kl = torch.tensor(1234.0)
    loss, logs = loss_fn.generator_loss(x, rec, kl, dec.weight, global_step=9)
    p = loss_fn.perceptual(x, rec).mean()
    l1 = (x - rec).abs().mean()
    want = l1 + 1.0 * p + 1e-6 / (3 * 32 * 32) * kl
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert logs["g_adv"] == 0.0 and logs["adaptive_weight"] == 0.0 and logs["disc_factor"] == 0.0
    assert logs["reg_weight"] == pytest.approx(1e-6 / 3072)
    assert logs["total"] == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())  # never called
    assert not loss_fn.discriminator_active(9) and loss_fn.discriminator_active(10)


def test_after_disc_start_total_is_the_sum_of_weighted_parts() -> None:
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(tiny_config(regularizer="vq", codebook_weight=0.7, disc_factor=0.8))
    x, dec, rec = _inputs(1)
    codebook = torch.tensor(0.25)
    loss, logs = loss_fn.generator_loss(x, rec, codebook, dec.weight, global_step=10)
    # recompute every part independently
    l1 = (x - rec).abs().mean()
    p = loss_fn.perceptual(x, rec).mean()
    rec_loss = l1 + p
    g_adv = -loss_fn.discriminator(rec).mean()
    grad_rec = torch.autograd.grad(rec_loss, dec.weight, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g_adv, dec.weight, retain_graph=True)[0]
    weight = 0.5 * min(grad_rec.norm() / (grad_g.norm() + 1e-4), 1e4)
    want = rec_loss + 0.7 * codebook + weight * 0.8 * g_adv
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert logs["adaptive_weight"] == pytest.approx(weight.item(), rel=1e-5)
    assert logs["g_adv"] == pytest.approx(g_adv.item(), rel=1e-5)
    assert logs["reg_weight"] == 0.7 and logs["disc_factor"] == 0.8
    loss.backward()  # the retained graph still backpropagates
    assert dec.weight.grad is not None and torch.isfinite(dec.weight.grad).all()


def test_generator_loss_without_gradients_logs_zero_weight() -> None:
    loss_fn = AutoencoderLoss(tiny_config(perceptual_weight=0.0))
    x, dec, rec = _inputs(2)
    with torch.no_grad():
        zero = torch.tensor(0.0)
        loss, logs = loss_fn.generator_loss(x, rec.detach(), zero, None, global_step=20)
    assert logs["adaptive_weight"] == 0.0 and logs["g_adv"] != 0.0
    assert loss.item() == pytest.approx(logs["l1"], rel=1e-6)
    with pytest.raises(ValueError, match="last_layer=None"):
        loss_fn.generator_loss(x, rec, torch.tensor(0.0), None, global_step=20)


def test_discriminator_loss_matches_hinge_on_detached_inputs() -> None:
    loss_fn = AutoencoderLoss(tiny_config(perceptual_weight=0.0, disc_factor=2.0))
    x, dec, rec = _inputs(3)
    d_loss, logs = loss_fn.discriminator_loss(x, rec, global_step=10)
    real, fake = loss_fn.discriminator(x), loss_fn.discriminator(rec.detach())
    assert d_loss.item() == pytest.approx(2.0 * hinge_d_loss(real, fake).item(), rel=1e-6)
    assert logs["logits_real"] == pytest.approx(real.mean().item(), rel=1e-5)
    d_loss.backward()
    assert dec.weight.grad is None  # reconstructions were detached
    assert loss_fn.discriminator.main[0].weight.grad is not None
    before, _ = loss_fn.discriminator_loss(x, rec, global_step=9)
    assert before.item() == 0.0


def test_vanilla_disc_loss_option() -> None:
    loss_fn = AutoencoderLoss(tiny_config(perceptual_weight=0.0, disc_loss="vanilla"))
    x, _, rec = _inputs(4)
    d_loss, _ = loss_fn.discriminator_loss(x, rec, global_step=10)
    real, fake = loss_fn.discriminator(x), loss_fn.discriminator(rec.detach())
    assert d_loss.item() == pytest.approx(vanilla_d_loss(real, fake).item(), rel=1e-6)


def test_bad_arguments_raise() -> None:
    loss_fn = AutoencoderLoss(tiny_config(perceptual_weight=0.0))
    x, dec, rec = _inputs()
    with pytest.raises(ValueError, match="scalar"):
        loss_fn.generator_loss(x, rec, torch.zeros(2), dec.weight, 0)
    with pytest.raises(ValueError, match="must match"):
        loss_fn.generator_loss(x, rec[:, :, :16], torch.tensor(0.0), dec.weight, 0)
    with pytest.raises(ValueError, match="disc_loss"):
        tiny_config(disc_loss="wgan")
    with pytest.raises(ValueError, match="kl_weight"):
        tiny_config(kl_weight=-1.0)
    with pytest.raises(ValueError, match="regularizer"):
        AutoencoderLossConfig.from_dict({"regularizer": "none"})


def test_config_round_trip_and_checkpoint_holds_only_the_discriminator(tmp_path) -> None:
    cfg = tiny_config(perceptual_resize=None)
    cfg.save(tmp_path / "loss.yaml")
    assert AutoencoderLossConfig.load(tmp_path / "loss.yaml") == cfg
    torch.manual_seed(0)
    loss_fn = AutoencoderLoss(cfg)
    assert all(k.startswith("discriminator.") for k in loss_fn.state_dict())
    save_module(loss_fn, cfg, tmp_path, "loss")
    torch.manual_seed(1)
    loaded = load_module(AutoencoderLoss, AutoencoderLossConfig, tmp_path, "loss")
    for (k, a), b in zip(loss_fn.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
