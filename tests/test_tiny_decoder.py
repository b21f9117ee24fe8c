"""The tiny decoder (autoencoder/tiny.py): diffusers' AutoencoderTiny parity, its place in model
folders and pipelines (decodes by default, set_decoder switches), ldm convert --tiny-decoder, and
``train: tiny_decoder`` (the autoencoder frozen, only the tiny decoder learns)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_to_image import tiny_components
from test_train_autoencoder import images, make_config  # noqa: F401 (fixture)

from latent_diffusion.autoencoder.tiny import TinyDecoder, TinyDecoderConfig, tiny_decoder_state_from_diffusers
from latent_diffusion.cli import UsageError
from latent_diffusion.convert import ConversionError, convert
from latent_diffusion.convert.tiny_decoder import read_tiny_decoder
from latent_diffusion.io import load_tensors, save_module
from latent_diffusion.model.components import decode_images
from latent_diffusion.model.folder import load_components, model_hash, read_index, save_components
from latent_diffusion.pipelines import TextToImage
from latent_diffusion.pipelines.cli import load_pipeline
from latent_diffusion.training.autoencoder import AutoencoderTrainer
from latent_diffusion.training.logging import read_metrics

FAST = dict(steps=2, progress=False, seed=3)
# f=2 like tiny_components' autoencoder: one upsampling between two levels.
TINY_F2 = TinyDecoderConfig(latent_channels=4, channels=(16, 8), blocks=(1, 1))


def with_tiny_decoder(seed: int = 0):
    """tiny_components plus a random f=2 tiny decoder."""
    torch.manual_seed(seed + 100)
    return dataclasses.replace(tiny_components(seed=seed), tiny_decoder=TinyDecoder(TINY_F2).eval())


def diffusers_tiny(blocks=(1, 2, 1), channels=(8, 8, 8)):
    """A random diffusers AutoencoderTiny with a decoder of ``blocks`` / ``channels``."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.AutoencoderTiny(encoder_block_out_channels=channels, decoder_block_out_channels=channels,
                                      num_encoder_blocks=blocks, num_decoder_blocks=blocks, latent_channels=4)
    with torch.no_grad():  # random biases too, so that a bias put in the wrong place shows
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def test_decodes_as_diffusers_autoencoder_tiny() -> None:
    reference = diffusers_tiny()
    ours = TinyDecoder(TinyDecoderConfig(channels=(8, 8, 8), blocks=(1, 2, 1))).eval()
    ours.load_state_dict(tiny_decoder_state_from_diffusers(reference.state_dict()))  # strict: same names
    z = torch.randn(2, 4, 6, 5) * 2
    with torch.no_grad():
        expected = reference.decode(z).sample
        got = ours.decode_latents(z)
    assert got.shape == (2, 3, 24, 20) and ours.downsampling_factor == 4
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_reads_a_diffusers_autoencoder_tiny_folder(tmp_path: Path) -> None:
    reference = diffusers_tiny(blocks=(2, 1), channels=(8, 8))
    reference.save_pretrained(tmp_path / "taesd")
    tiny = read_tiny_decoder(tmp_path / "taesd")
    assert tiny.config == TinyDecoderConfig(channels=(8, 8), blocks=(2, 1))
    z = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(tiny.decode_latents(z), reference.decode(z).sample, rtol=0, atol=1e-5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ConversionError, match="not an AutoencoderTiny"):
        read_tiny_decoder(tmp_path / "other")
    with pytest.raises(ConversionError, match="neither tiny_decoder.json"):
        read_tiny_decoder(tmp_path)


def test_narrowing_widths_and_bad_configs() -> None:
    tiny = TinyDecoder(TinyDecoderConfig(channels=(16, 8, 4), blocks=(2, 1, 1)))
    assert tiny.decode_latents(torch.randn(1, 4, 3, 3)).shape == (1, 3, 12, 12)
    # The latents are bounded softly first (TAESD's 3 tanh(z / 3)): huge latents give finite pixels.
    assert torch.isfinite(tiny.decode_latents(torch.full((1, 4, 3, 3), 1e30))).all()
    with pytest.raises(ValueError, match="one entry per level"):
        TinyDecoderConfig(channels=(8, 8), blocks=(1,))
    with pytest.raises(ValueError, match="latents shaped"):
        tiny.decode_latents(torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        tiny.decode_latents(torch.randn(1, 3, 3, 3))


def test_pipeline_decodes_with_the_tiny_decoder_and_can_switch() -> None:
    components = with_tiny_decoder()
    pipe = TextToImage(components)
    assert pipe.decoder == "tiny"
    result = pipe("a square", **FAST)
    tiny_pixels = decode_images(components, result.latents)
    full_pixels = decode_images(dataclasses.replace(components, tiny_decoder=None), result.latents)
    assert not torch.equal(tiny_pixels, full_pixels)
    assert result.metadata[0].decoder == "tiny"
    pipe.set_decoder("full")
    again = pipe("a square", **FAST)
    torch.testing.assert_close(again.latents, result.latents, rtol=0, atol=0)  # decoding only changed
    assert again.metadata[0].decoder == "full"
    # The pixels are the full decoder's of the same latents (to the uint8 rounding).
    as_tensor = torch.from_numpy(np.asarray(again.images[0], dtype=np.float32)) / 127.5 - 1
    torch.testing.assert_close(as_tensor.permute(2, 0, 1), full_pixels[0], rtol=0, atol=1 / 127.5 + 1e-6)
    tiny_uint8 = torch.from_numpy(np.asarray(result.images[0], dtype=np.float32)) / 127.5 - 1
    torch.testing.assert_close(tiny_uint8.permute(2, 0, 1), tiny_pixels[0], rtol=0, atol=1 / 127.5 + 1e-6)
    pipe.set_decoder("tiny")
    assert pipe.decoder == "tiny" and pipe("a square", **FAST).images[0].tobytes() == result.images[0].tobytes()
    plain = TextToImage(tiny_components())
    with pytest.raises(ValueError, match="has no tiny decoder.*--tiny-decoder"):
        plain.set_decoder("tiny")
    with pytest.raises(ValueError, match="decoder"):
        pipe.set_decoder("fast")


def test_a_tiny_decoder_that_does_not_fit_is_refused() -> None:
    wrong_factor = TinyDecoder(TinyDecoderConfig(channels=(8, 8, 8), blocks=(1, 1, 1)))
    with pytest.raises(ValueError, match="does not fit the autoencoder's"):
        dataclasses.replace(tiny_components(), tiny_decoder=wrong_factor)


def test_model_folder_round_trip_and_convert(tmp_path: Path) -> None:
    components = with_tiny_decoder()
    folder = save_components(components, tmp_path / "model")
    loaded = load_components(folder)
    assert loaded.tiny_decoder is not None and loaded.tiny_decoder.config == TINY_F2
    z = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(decode_images(loaded, z), decode_images(components, z), rtol=0, atol=0)
    # ldm convert: a model folder plus a tiny decoder (here: the one just saved) -> a model folder.
    plain = save_components(tiny_components(), tmp_path / "plain", extra={"training_steps": 7})
    fmt, out = convert(plain, tmp_path / "with-tiny", tiny_decoder=folder)
    assert fmt == "ours" and (out / "tiny_decoder.safetensors").is_file()
    index = read_index(out)  # what the source's index said of the model is kept
    assert index["training_steps"] == 7 and index["tiny_decoder_from"] == "model"
    assert model_hash(out) != model_hash(plain)
    torch.testing.assert_close(decode_images(load_components(out), z), decode_images(components, z), rtol=0, atol=0)
    bad = tmp_path / "bad-tiny"  # f=4 for an f=2 autoencoder
    bad.mkdir()
    wrong = TinyDecoderConfig(channels=(8, 8, 8), blocks=(1, 1, 1))
    save_module(TinyDecoder(wrong), wrong, bad, "tiny_decoder")
    with pytest.raises(ConversionError, match="does not fit"):
        convert(plain, tmp_path / "refused", tiny_decoder=bad)
    assert not (tmp_path / "refused").exists()
    # The CLI's loader: --decoder tiny on a model without one is a one-line usage error.
    with pytest.raises(UsageError, match="has no tiny decoder"):
        load_pipeline(plain, "cpu", decoder="tiny")
    assert load_pipeline(out, "cpu", decoder="full").decoder == "full"


def test_training_a_tiny_decoder_leaves_the_autoencoder_alone(images: Path, tmp_path: Path) -> None:  # noqa: F811
    source = AutoencoderTrainer(make_config(images, tmp_path / "base", steps=2)).train()
    config = make_config(images, tmp_path / "tiny", steps=30, disc_start=25, lr=3e-3)
    config = config.replace(init_from=str(source), train="tiny_decoder", tiny_decoder=TINY_F2,
                            run=config.run.replace(checkpoint_every=15, image_every=30))
    trainer = AutoencoderTrainer(config)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    final = trainer.train()
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert sorted(p.name for p in final.iterdir()) == ["tiny_decoder.json", "tiny_decoder.safetensors"]
    assert set(load_tensors(final / "tiny_decoder.safetensors")) == set(TinyDecoder(TINY_F2).state_dict())
    l1 = [m["l1"] for m in read_metrics(tmp_path / "tiny") if "l1" in m]
    assert sum(l1[-5:]) / 5 < 0.7 * sum(l1[:5]) / 5  # it learns to decode the frozen latents
    logs = [m for m in read_metrics(tmp_path / "tiny") if "total" in m]
    assert "d_loss" in logs[-1] and "d_loss" not in logs[0]  # the same adversarial schedule
    # A resumed run continues the tiny decoder, not the autoencoder.
    resumed = AutoencoderTrainer(config.replace(run=config.run.replace(max_steps=32)), resume=True)
    assert resumed.step == 30
    torch.testing.assert_close(resumed.tiny.state_dict(), {k: v for k, v in load_tensors(
        tmp_path / "tiny" / "checkpoints" / "step-000030" / "tiny_decoder.safetensors").items()}, rtol=0, atol=0)


def test_tiny_decoder_training_config_errors(images: Path, tmp_path: Path) -> None:  # noqa: F811
    config = make_config(images, tmp_path / "run")
    with pytest.raises(ValueError, match="train: tiny_decoder trains a decoder for a trained autoencoder"):
        config.replace(train="tiny_decoder", tiny_decoder=TINY_F2)
    with pytest.raises(ValueError, match="needs one"):
        config.replace(train="tiny_decoder", init_from="somewhere")
    with pytest.raises(ValueError, match="goes with train: tiny_decoder"):
        config.replace(tiny_decoder=TINY_F2)
    with pytest.raises(ValueError, match="give it 2 levels"):
        config.replace(train="tiny_decoder", init_from="somewhere",
                       tiny_decoder=TinyDecoderConfig(channels=(8, 8, 8), blocks=(1, 1, 1)))


def test_openvino_runs_the_tiny_decoder(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    components = with_tiny_decoder()
    reference = TextToImage(components)("a square", **FAST)
    pipe = TextToImage(components)
    pipe.set_backend("openvino", cache_dir=tmp_path)
    assert pipe.backend.decoder.torch_module is components.tiny_decoder
    got = pipe("a square", **FAST)
    grey = np.abs(np.asarray(got.images[0], np.int16) - np.asarray(reference.images[0], np.int16)).max()
    assert grey <= 1 and got.metadata[0].decoder == "tiny"
    pipe.set_decoder("full")  # the backend follows: its decoder now wraps the autoencoder
    assert pipe.backend.name == "openvino" and pipe.backend.decoder.torch_module is components.autoencoder


def test_reconstruction_is_scored_on_the_decoder_that_draws(tmp_path: Path) -> None:
    from latent_diffusion.evaluation.reconstruction import evaluate_autoencoder, psnr
    from latent_diffusion.evaluation.runner import load_model

    model = load_model(save_components(with_tiny_decoder(), tmp_path / "model"))
    paired = model.reconstructor
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = model.autoencoder.encode(x).mode() * model.autoencoder.config.scale_factor
        expected = psnr(x, model.components.tiny_decoder.decode_latents(z).clamp(-1, 1)).mean()
    result = evaluate_autoencoder(paired, [{"image": x}], sample_posterior=False, perceptual=False,
                                  fid_extractor=False)
    assert abs(result.psnr - float(expected)) < 1e-4
    plain = load_model(save_components(tiny_components(), tmp_path / "plain"))
    assert plain.reconstructor is plain.autoencoder


def test_a_stable_diffusion_model_takes_a_taesd_folder(tmp_path: Path) -> None:
    from sd_testing import TINY, make_components

    sd = save_components(make_components(TINY["sd1"], seed=1), tmp_path / "sd")
    taesd = diffusers_tiny(blocks=(1, 1, 1, 1), channels=(8, 8, 8, 8))  # TAESD's layout: f=8, 4 latent channels
    taesd.save_pretrained(tmp_path / "taesd")
    fmt, out = convert(sd, tmp_path / "sd-taesd", tiny_decoder=tmp_path / "taesd")
    pipe = TextToImage.from_pretrained(out)
    assert fmt == "ours" and pipe.decoder == "tiny"
    result = pipe("a lighthouse", steps=2, progress=False, seed=0)
    with torch.no_grad():  # SD pipelines hand TAESD the scaled latents, as ours does
        expected = taesd.decode(result.latents).sample.clamp(-1, 1)
    pixels = torch.from_numpy(np.asarray(result.images[0], dtype=np.float32)) / 127.5 - 1
    torch.testing.assert_close(pixels.permute(2, 0, 1), expected[0], rtol=0, atol=1 / 127.5 + 1e-5)
    with pytest.warns(UserWarning, match="gets the full VAE only"):
        convert(out, tmp_path / "diffusers")


def test_the_shipped_consistency_model_decodes_with_its_tiny_decoder() -> None:
    folder = Path(__file__).resolve().parents[1] / "models" / "emoji-styles-lcm"
    card = (folder / "README.md").read_text()
    assert f"model hash `{model_hash(folder)}`" in card  # the card names the folder as shipped
    pipe = TextToImage.from_pretrained(folder)
    assert pipe.decoder == "tiny" and pipe.components.tiny_decoder.config.channels == (96, 64, 32)
    tiny = pipe("red heart", seed=0, progress=False)
    pipe.set_decoder("full")
    full = pipe("red heart", seed=0, progress=False)
    torch.testing.assert_close(tiny.latents, full.latents, rtol=0, atol=0)
    # Two decoders of the same latents: close pictures, not the same bytes (measured: a mean of
    # 14.5 grey levels here, 12-15 over three prompts; an untrained tiny decoder: 193).
    difference = np.abs(np.asarray(tiny.images[0], np.int16) - np.asarray(full.images[0], np.int16))
    assert 1 < difference.mean() < 25
