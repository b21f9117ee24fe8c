"""First-stage autoencoder: shapes, posterior/quantizer maths against closed forms, checkpoint
key names against the original SD VAE, outputs against diffusers' AutoencoderKL, IO and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from latent_diffusion.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    DiagonalGaussian,
    QuantizedLatent,
    VectorQuantizer,
    code_perplexity,
)
from latent_diffusion.io import load_module, save_module



@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run these tiny models on one thread: on a shared 2-core machine, intra-op threads spin
    and wait on each other, costing about 3x the CPU time; restored for other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FACTOR_MULTS = {1: (1,), 2: (1, 2), 4: (1, 2, 2), 8: (1, 2, 2, 2), 16: (1, 1, 2, 2, 2)}


def tiny_config(regularizer: str = "kl", mult: tuple[int, ...] = (1, 2), **kw) -> AutoencoderConfig:
    """A few-thousand-parameter model: base 8 channels, 4 norm groups, 1 res block."""
    base = dict(base_channels=8, channel_mult=mult, num_res_blocks=1, z_channels=3, norm_groups=4,
                regularizer=regularizer, codebook_size=16)
    base.update(kw)
    return AutoencoderConfig(**base)


def tiny_model(regularizer: str = "kl", mult: tuple[int, ...] = (1, 2), seed: int = 0, **kw) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(tiny_config(regularizer, mult, **kw)).eval()


# ---------------------------------------------------------------- shapes and latent scaling


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
@pytest.mark.parametrize("factor", sorted(FACTOR_MULTS))
def test_shapes_for_every_factor(regularizer: str, factor: int) -> None:
    model = tiny_model(regularizer, FACTOR_MULTS[factor])
    assert model.downsampling_factor == factor
    x = torch.randn(2, 3, 16, 32)
    latent_shape = (2, 3, 16 // factor, 32 // factor)
    with torch.no_grad():
        rec, posterior = model(x)
        assert isinstance(posterior, DiagonalGaussian if regularizer == "kl" else QuantizedLatent)
        assert posterior.mode().shape == latent_shape
        assert rec.shape == x.shape
        assert model.encode_latents(x).shape == latent_shape
        assert model.decode_latents(torch.randn(latent_shape)).shape == x.shape
    downsamplers = [n for n, _ in model.named_modules() if n.endswith("downsample")]
    upsamplers = [n for n, _ in model.named_modules() if n.endswith("upsample")]
    assert len(downsamplers) == len(upsamplers) == int(math.log2(factor))


def test_kl_latents_honour_scale_factor() -> None:
    model = tiny_model("kl", scale_factor=0.25)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        posterior = model.encode(x)
        torch.testing.assert_close(model.encode_latents(x), 0.25 * posterior.mean)
        gen = torch.Generator().manual_seed(3)
        expected = 0.25 * posterior.sample(torch.Generator().manual_seed(3))
        torch.testing.assert_close(model.encode_latents(x, sample=True, generator=gen), expected)
        z = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(model.decode_latents(z), model.decode(z / 0.25))


def test_vq_latents_are_prequantization_and_decode_quantizes() -> None:
    model = tiny_model("vq", scale_factor=2.0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        posterior = model.encode(x)
        torch.testing.assert_close(model.encode_latents(x), 2.0 * posterior.latent)
        z = torch.randn(2, 3, 8, 8)
        quantized = model.quantize(z / 2.0).quantized
        torch.testing.assert_close(model.decode_latents(z), model.decode(quantized))
        # Round trip through the diffusion view equals the autoencoder's own reconstruction.
        torch.testing.assert_close(model.decode_latents(model.encode_latents(x)), model(x)[0])


def test_last_layer_is_decoder_output_conv() -> None:
    model = tiny_model("kl")
    assert model.last_layer is model.decoder.conv_out.weight
    assert model.latent_channels == 3


# ---------------------------------------------------------------- checkpoint compatibility


def test_module_names_match_original_sd_vae() -> None:
    with torch.device("meta"):
        model = Autoencoder(AutoencoderConfig())
    state = model.state_dict()
    for key in [
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.0.block.1.conv2.bias",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.2.downsample.conv.weight",
        "encoder.mid.block_1.conv1.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.mid.attn_1.proj_out.bias",
        "encoder.mid.block_2.norm2.weight",
        "encoder.norm_out.weight",
        "encoder.conv_out.weight",
        "decoder.conv_in.weight",
        "decoder.mid.attn_1.k.weight",
        "decoder.up.0.block.2.conv2.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        "decoder.up.3.upsample.conv.weight",
        "decoder.norm_out.bias",
        "decoder.conv_out.weight",
        "quant_conv.weight",
        "post_quant_conv.bias",
    ]:
        assert key in state, key
    assert "encoder.down.3.downsample.conv.weight" not in state
    assert "decoder.up.0.upsample.conv.weight" not in state
    # Shapes of the released SD v1 VAE (kl-f8): q/k/v are 1x1 convs, quant_conv maps 8 -> 8.
    assert state["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert state["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert state["encoder.conv_out.weight"].shape == (8, 512, 3, 3)
    assert state["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    # The SD v1 VAE checkpoint holds 248 tensors and 83,653,863 parameters.
    assert len(state) == 248
    assert sum(v.numel() for v in state.values()) == 83_653_863


def test_vq_codebook_key_name() -> None:
    state = tiny_model("vq").state_dict()
    assert state["quantize.embedding.weight"].shape == (16, 3)


def test_matches_diffusers_autoencoder_kl() -> None:
    """Our weights, converted by diffusers' own LDM->diffusers key map, give diffusers' outputs."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = tiny_model("kl", (1, 2, 4, 4), num_res_blocks=2, z_channels=4)
    reference = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 32, 32),
        layers_per_block=2, latent_channels=4, norm_num_groups=4, sample_size=32,
    ).eval()
    ours = model.state_dict()
    converted = convert_ldm_vae_checkpoint(dict(ours), reference.config)
    assert len(converted) == len(ours)
    reference.load_state_dict(converted, strict=True)

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        posterior = model.encode(x)
        ref_dist = reference.encode(x).latent_dist
        torch.testing.assert_close(posterior.mean, ref_dist.mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(posterior.logvar, ref_dist.logvar, atol=1e-5, rtol=1e-4)
        z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(model.decode(z), reference.decode(z).sample, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- KL posterior


def test_kl_of_standard_normal_is_exactly_zero() -> None:
    posterior = DiagonalGaussian(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3))
    assert torch.equal(posterior.kl(), torch.zeros(2))
    assert posterior.regularization_loss().item() == 0.0


def test_kl_and_nll_match_closed_form() -> None:
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    posterior = DiagonalGaussian(mean, logvar)
    normal = torch.distributions.Normal(mean.double(), torch.exp(0.5 * logvar.double()))
    standard = torch.distributions.Normal(torch.zeros(()).double(), torch.ones(()).double())
    expected_kl = torch.distributions.kl_divergence(normal, standard).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.kl().double(), expected_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        posterior.regularization_loss().double(), expected_kl.mean(), rtol=1e-5, atol=1e-5
    )
    x = torch.randn(3, 2, 4, 4)
    expected_nll = -normal.log_prob(x.double()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.nll(x).double(), expected_nll, rtol=1e-5, atol=1e-4)
    assert posterior.stats()["kl"] == pytest.approx(expected_kl.mean().item(), rel=1e-5)
    torch.testing.assert_close(posterior.std, torch.exp(0.5 * logvar))
    torch.testing.assert_close(posterior.var, torch.exp(logvar))


def test_logvar_is_clamped_like_ldm() -> None:
    posterior = DiagonalGaussian.from_moments(torch.tensor([0.0, -100.0, 100.0, 5.0]).view(1, 4, 1, 1))
    assert posterior.mean.flatten().tolist() == [0.0, -100.0]
    assert posterior.logvar.flatten().tolist() == [20.0, 5.0]
    assert DiagonalGaussian(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -100.0)).logvar.item() == -30.0


def test_sample_is_seeded_reparameterized_and_has_the_right_moments() -> None:
    mean = torch.full((4, 4, 64, 64), 1.5, requires_grad=True)
    logvar = torch.full((4, 4, 64, 64), math.log(0.25))
    posterior = DiagonalGaussian(mean, logvar)
    a = posterior.sample(torch.Generator().manual_seed(7))
    b = posterior.sample(torch.Generator().manual_seed(7))
    c = posterior.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 65,536 draws: standard error of the mean is 0.5 / 256 ~ 0.002.
    assert a.mean().item() == pytest.approx(1.5, abs=0.01)
    assert a.std().item() == pytest.approx(0.5, abs=0.01)
    a.sum().backward()
    assert torch.equal(mean.grad, torch.ones_like(mean))
    assert torch.equal(posterior.mode(), mean)


# ---------------------------------------------------------------- vector quantizer


def hand_quantizer(beta: float = 0.25) -> VectorQuantizer:
    quantizer = VectorQuantizer(codebook_size=3, dim=2, beta=beta)
    with torch.no_grad():
        quantizer.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    return quantizer


def test_vq_loss_and_gradients_match_hand_computation() -> None:
    quantizer = hand_quantizer(beta=0.25)
    # Four latent vectors laid out as [B=1, C=2, H=2, W=2].
    vectors = torch.tensor([[0.2, 0.1], [0.9, -0.3], [0.1, 1.5], [0.6, 0.0]])
    z = vectors.t().reshape(1, 2, 2, 2).clone().requires_grad_(True)
    out = quantizer(z)
    # Nearest codes by hand: squared distances 0.05, 0.10, 0.26 and 0.16 (0.6 is nearer 1 than 0).
    assert out.indices.flatten().tolist() == [0, 1, 2, 1]
    mse = (0.05 + 0.10 + 0.26 + 0.16) / 8  # mean over 4 vectors x 2 channels
    assert out.loss.item() == pytest.approx((1 + 0.25) * mse, rel=1e-6)
    out.loss.backward()
    # Codebook term ||sg[z]-e||^2 moves code 0 towards z0 with weight 1; commitment moves z by beta.
    code_grad = quantizer.embedding.weight.grad[0]
    torch.testing.assert_close(code_grad, 2 * (torch.tensor([0.0, 0.0]) - vectors[0]) / 8)
    codes = quantizer.embedding.weight.detach()[torch.tensor([0, 1, 2, 1])]
    expected_z_grad = 0.25 * 2 * (vectors - codes) / 8
    torch.testing.assert_close(z.grad.reshape(2, 4).t(), expected_z_grad)


def test_vq_values_are_codebook_rows_and_nearest() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=32, dim=4, beta=0.25)
    with torch.no_grad():
        quantizer.embedding.weight.normal_()
    z = torch.randn(3, 4, 5, 6)
    out = quantizer(z)
    flat_q = out.quantized.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.equal(flat_q, quantizer.embedding.weight[out.indices.flatten()].detach())
    flat_z = z.permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(flat_z.double(), quantizer.embedding.weight.detach().double()).argmin(dim=1)
    assert torch.equal(out.indices.flatten(), brute)
    assert out.indices.shape == (3, 5, 6) and out.latent is z


def test_vq_straight_through_reaches_the_encoder() -> None:
    quantizer = hand_quantizer()
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    weights = torch.randn(1, 2, 3, 3)
    (quantizer(z).quantized * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # identity gradient through the quantizer
    assert quantizer.embedding.weight.grad is None  # codes reach the codebook only via the loss

    model = tiny_model("vq")
    rec, posterior = model(torch.randn(2, 3, 16, 16))
    (rec.square().mean() + posterior.regularization_loss()).backward()
    for name in ("encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight",
                 "quantize.embedding.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_perplexity_closed_forms() -> None:
    # k codes used equally often -> perplexity exactly k, usage k / K.
    indices = torch.tensor([2, 5, 7, 11] * 6)
    perplexity, usage = code_perplexity(indices, codebook_size=16)
    assert perplexity.item() == pytest.approx(4.0, rel=1e-6)
    assert usage.item() == 4 / 16
    # p = (1/2, 1/4, 1/4): entropy 1.5 ln 2, perplexity 2 ** 1.5.
    perplexity, _ = code_perplexity(torch.tensor([0, 0, 1, 2]), codebook_size=8)
    assert perplexity.item() == pytest.approx(2**1.5, rel=1e-6)
    # Through the quantizer: z placed exactly on codes 0 and 2, equally often.
    quantizer = hand_quantizer()
    z = torch.tensor([[0.0, 0.0], [0.0, 2.0]] * 2).t().reshape(1, 2, 2, 2)
    out = quantizer(z)
    assert out.stats() == pytest.approx({"vq_loss": 0.0, "perplexity": 2.0, "usage": 2 / 3})
    assert torch.equal(out.sample(), out.mode())


# ---------------------------------------------------------------- IO and config


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_save_load_round_trip(tmp_path: Path, regularizer: str) -> None:
    model = tiny_model(regularizer, scale_factor=0.5)
    save_module(model, model.config, tmp_path, "autoencoder")
    loaded = load_module(Autoencoder, Autoencoder.config_class, tmp_path, "autoencoder").eval()
    assert loaded.config == model.config
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x, sample_posterior=False)[0], model(x, sample_posterior=False)[0])
        assert torch.equal(loaded.encode_latents(x), model.encode_latents(x))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trip(tmp_path: Path, suffix: str) -> None:
    config = tiny_config("vq", (1, 2, 4), commitment_beta=0.5, scale_factor=0.18215, dropout=0.1)
    assert AutoencoderConfig.from_dict(config.to_dict()) == config
    config.save(tmp_path / f"ae{suffix}")
    loaded = AutoencoderConfig.load(tmp_path / f"ae{suffix}")
    assert loaded == config and loaded.channel_mult == (1, 2, 4)
    assert config.replace(scale_factor=0.3).scale_factor == 0.3


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"channel_mult": (1, 2, 2, 2, 2, 2)}, r"channel_mult=\(1, 2, 2, 2, 2, 2\) has 6 levels"),
        ({"channel_mult": ()}, r"has 0 levels"),
        ({"channel_mult": (1, 0)}, r"channel_mult\[1\]=0 must be > 0"),
        ({"norm_groups": 3}, r"norm_groups=3 does not divide base_channels=8"),
        ({"base_channels": 12, "norm_groups": 8}, r"norm_groups=8 does not divide base_channels=12"),
        ({"regularizer": "ae"}, r"regularizer='ae' is not supported; choose one of \['kl', 'vq'\]"),
        ({"scale_factor": 0.0}, r"scale_factor=0.0 must be > 0"),
        ({"dropout": 1.5}, r"dropout=1.5 must lie in \[0.0, 1.0\]"),
        ({"z_channels": 0}, r"z_channels=0 must be > 0"),
        ({"num_res_blocks": 0}, r"num_res_blocks=0 must be > 0"),
        ({"commitment_beta": -0.1}, r"commitment_beta=-0.1 must be >= 0"),
    ],
)
def test_bad_config_raises(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_bad_config_from_dict_raises() -> None:
    with pytest.raises(ValueError, match="is not one of"):
        AutoencoderConfig.from_dict({"regularizer": "gan"})
    with pytest.raises(ValueError, match="unknown key"):
        AutoencoderConfig.from_dict({"zchannels": 4})


def test_bad_inputs_raise() -> None:
    model = tiny_model("vq", (1, 2, 2))  # f = 4
    with pytest.raises(ValueError, match=r"x has 1 channels but the model expects 3"):
        model.encode(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x height=18 is not divisible by 4"):
        model(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"x width=10 is not divisible by 4"):
        model.encode_latents(torch.randn(1, 3, 16, 10))
    with pytest.raises(ValueError, match=r"x has shape \(3, 16, 16\)"):
        model.encode(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match=r"z has 4 channels but the model expects 3"):
        model.decode(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"z has 4 channels but the model expects 3"):
        model.decode_latents(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"z has shape \(3, 4, 4\)"):
        model.decode(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match=r"quantizer expects \[batch, 3, height, width\]"):
        model.quantize(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="logvar has shape"):
        DiagonalGaussian(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 1))
    with pytest.raises(ValueError, match="must be an AutoencoderConfig"):
        Autoencoder({"z_channels": 4})  # type: ignore[arg-type]


# ---------------------------------------------------------------- mixed precision


def test_bf16_autocast_kl_close_to_fp32() -> None:
    model = tiny_model("kl")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, ref_post = model(x, sample_posterior=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rec, posterior = model(x, sample_posterior=False)
            latents = model.encode_latents(x, sample=True, generator=torch.Generator().manual_seed(0))
            decoded = model.decode_latents(latents)
    assert posterior.regularization_loss().dtype == torch.float32
    assert torch.isfinite(posterior.regularization_loss()) and torch.isfinite(decoded).all()
    # bf16 keeps ~3 significant digits; a few percent of the output scale is the expected error.
    assert (rec.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert posterior.stats()["kl"] == pytest.approx(ref_post.stats()["kl"], rel=0.05)


def test_bf16_autocast_vq_gives_codebook_rows() -> None:
    model = tiny_model("vq")
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec, posterior = model(x)
        loss = rec.float().square().mean() + posterior.regularization_loss()
    loss.backward()
    assert torch.isfinite(loss) and model.get_parameter("encoder.conv_in.weight").grad is not None
    flat_q = posterior.quantized.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    rows = model.quantize.embedding.weight.detach()[posterior.indices.flatten()].to(flat_q.dtype)
    assert torch.equal(flat_q, rows)
