"""Stage 1 end to end on a generated image folder: losses, GAN switch-on, exact resume, scale factor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.data import DataConfig
from latent_diffusion.io import load_module, load_tensors
from latent_diffusion.losses import AutoencoderLossConfig
from latent_diffusion.training.autoencoder import AutoencoderTrainer, AutoencoderTrainingConfig, StepBatches
from latent_diffusion.training.logging import read_metrics
from latent_diffusion.training.settings import OptimConfig, RunConfig


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 16 px pictures: coloured backgrounds with a white square at varying places."""
    root = tmp_path_factory.mktemp("stage1") / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        pixels = np.empty((16, 16, 3), np.uint8)
        pixels[...] = rng.integers(0, 256, 3)
        x, y = rng.integers(0, 9, 2)
        pixels[y:y + 6, x:x + 6] = 255
        Image.fromarray(pixels).save(root / f"{i:02d}.png")
        (root / f"{i:02d}.txt").write_text("a square")
    return root


def make_config(images: Path, run_dir: Path, *, steps: int = 4, perceptual: float = 0.0, disc_start: int = 2,
                lr: float = 1e-3) -> AutoencoderTrainingConfig:
    """A tiny stage-1 config (f=2, 8 base channels)."""
    return AutoencoderTrainingConfig(
        data=DataConfig(name="imagefolder", path=str(images), resolution=16, val_fraction=0.0),
        model=AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=4),
        loss=AutoencoderLossConfig(perceptual_weight=perceptual, disc_start=disc_start, disc_base_channels=8,
                                   disc_num_layers=2),
        optim=OptimConfig(lr=lr, betas=(0.5, 0.9)),
        run=RunConfig(run_dir=str(run_dir), max_steps=steps, batch_size=4, log_every=1, image_every=2,
                      checkpoint_every=2),
        scale_factor_samples=16,
    )


def test_trains_with_all_losses_and_exports_scale_factor(images: Path, tmp_path: Path) -> None:
    config = make_config(images, tmp_path / "run", steps=4, perceptual=1.0, disc_start=2)
    final = AutoencoderTrainer(config).train()
    logs = [m for m in read_metrics(tmp_path / "run") if "total" in m]
    assert [m["step"] for m in logs] == [1, 2, 3, 4]
    # The adversarial half is off before disc_start and on after it, with an adaptive weight.
    assert logs[0]["adaptive_weight"] == 0.0 and "d_loss" not in logs[0]
    assert logs[-1]["adaptive_weight"] > 0.0 and "d_loss" in logs[-1]
    assert all(m["perceptual"] > 0 for m in logs)
    model = load_module(Autoencoder, AutoencoderConfig, final, "autoencoder")
    # The exported scale factor is 1 / std of posterior samples of the latents (LDM's definition):
    # rescaled samples have about unit std.
    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32) / 127.5 - 1).permute(2, 0, 1)
                         for p in sorted(images.glob("*.png"))])
    with torch.no_grad():
        latents = model.encode(batch).sample(generator=torch.Generator().manual_seed(1)) * model.config.scale_factor
    assert model.config.scale_factor != 1.0
    assert 0.9 < float(latents.std()) < 1.1
    assert (tmp_path / "run" / "images" / "reconstructions").is_dir()


def test_reconstruction_loss_falls_when_overfitting_one_batch(images: Path, tmp_path: Path) -> None:
    one_batch = tmp_path / "four"
    one_batch.mkdir()
    for path in sorted(images.glob("*"))[:8]:  # 4 images and their captions: one batch
        (one_batch / path.name).write_bytes(path.read_bytes())
    config = make_config(one_batch, tmp_path / "run", steps=40, disc_start=10_000, lr=3e-3)
    config = config.replace(run=config.run.replace(checkpoint_every=40, image_every=40))
    AutoencoderTrainer(config).train()
    l1 = [m["l1"] for m in read_metrics(tmp_path / "run") if "l1" in m]
    assert np.mean(l1[-5:]) < 0.5 * np.mean(l1[:5]), l1


def test_resume_is_bit_identical(images: Path, tmp_path: Path) -> None:
    straight = AutoencoderTrainer(make_config(images, tmp_path / "a", steps=4)).train()
    AutoencoderTrainer(make_config(images, tmp_path / "b", steps=2)).train()
    resumed = AutoencoderTrainer(make_config(images, tmp_path / "b", steps=4), resume=True)
    assert resumed.step == 2
    final = resumed.train()
    a = load_tensors(straight / "autoencoder.safetensors")
    b = load_tensors(final / "autoencoder.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The discriminator state (trained from step 2 on) was restored too.
    da = load_tensors(tmp_path / "a" / "checkpoints" / "step-000004" / "discriminator.safetensors")
    db = load_tensors(tmp_path / "b" / "checkpoints" / "step-000004" / "discriminator.safetensors")
    assert all(torch.equal(da[k], db[k]) for k in da)
    # Every step logged once: the checkpoint's own record survives the resume (issue #20).
    steps = [m["step"] for m in read_metrics(tmp_path / "b") if "l1" in m]
    assert steps == [m["step"] for m in read_metrics(tmp_path / "a") if "l1" in m] == [1, 2, 3, 4]


def test_step_batches_cover_each_epoch_and_shard_disjointly() -> None:
    one = StepBatches(size=12, batch=4, world=1, rank=0, seed=3, start=0, stop=3)
    epoch = [i for batch in one for i in batch]
    assert sorted(epoch) == list(range(12))
    two = [StepBatches(size=12, batch=2, world=2, rank=r, seed=3, start=0, stop=3) for r in (0, 1)]
    for step in range(3):
        shards = [set(s.indices(step)) for s in two]
        assert not shards[0] & shards[1]
        assert shards[0] | shards[1] == set(one.indices(step))


def test_mismatched_regularizers_are_rejected(images: Path, tmp_path: Path) -> None:
    config = make_config(images, tmp_path / "run")
    with pytest.raises(ValueError, match="loss.regularizer='vq' must equal model.regularizer='kl'"):
        config.replace(loss=config.loss.replace(regularizer="vq"))


def test_gradient_accumulation_takes_the_mean_gradient_of_the_whole_batch(images: Path, tmp_path: Path) -> None:
    """Two micro-batches of 2 step as one batch of 4 (the same images and posterior noise; the
    discriminator, whose batch norm sees each micro-batch apart, is off), up to float summation."""
    whole = make_config(images, tmp_path / "whole", steps=3, disc_start=10_000)
    halves = whole.replace(optim=whole.optim.replace(grad_accum=2), run=whole.run.replace(
        run_dir=str(tmp_path / "halves"), batch_size=2))
    a = load_tensors(AutoencoderTrainer(whole).train() / "autoencoder.safetensors")
    b = load_tensors(AutoencoderTrainer(halves).train() / "autoencoder.safetensors")
    single = make_config(images, tmp_path / "single", steps=3, disc_start=10_000)
    c = load_tensors(AutoencoderTrainer(single.replace(run=single.run.replace(batch_size=2))).train()
                     / "autoencoder.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=0)
    # Not a tautology: a batch of 2 without accumulation trains to other weights.
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-3
    # With the discriminator on, both halves are judged and logged.
    adversarial = halves.replace(loss=halves.loss.replace(disc_start=0),
                                 run=halves.run.replace(run_dir=str(tmp_path / "adversarial"), max_steps=2))
    AutoencoderTrainer(adversarial).train()
    logs = [m for m in read_metrics(tmp_path / "adversarial") if "d_loss" in m]
    assert [m["step"] for m in logs] == [1, 2]


def test_decoder_fine_tune_keeps_the_latents_and_their_scale(images: Path, tmp_path: Path) -> None:
    source = AutoencoderTrainer(make_config(images, tmp_path / "base", steps=2)).train()
    config = make_config(images, tmp_path / "decoder", steps=3, perceptual=1.0, disc_start=0)
    config = config.replace(init_from=str(source), train="decoder")
    final = AutoencoderTrainer(config).train()
    before, after = load_tensors(source / "autoencoder.safetensors"), load_tensors(final / "autoencoder.safetensors")
    encoder_side = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_side = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_side and decoder_side and len(encoder_side) + len(decoder_side) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in encoder_side)  # same latents, bit for bit
    assert not all(torch.equal(before[k], after[k]) for k in decoder_side)
    scale = lambda folder: AutoencoderConfig.load(folder / "autoencoder.json").scale_factor  # noqa: E731
    assert scale(final) == scale(source)  # the UNet's latent scaling still holds


def test_decoder_fine_tune_needs_a_matching_source(images: Path, tmp_path: Path) -> None:
    config = make_config(images, tmp_path / "run")
    with pytest.raises(ValueError, match="train: decoder trains a decoder for a trained autoencoder; set init_from"):
        config.replace(train="decoder")
    with pytest.raises(FileNotFoundError, match="init_from=.* has no autoencoder.json; .* point `init_from:`"):
        AutoencoderTrainer(config.replace(init_from=str(tmp_path / "nowhere"), train="decoder"))
    source = AutoencoderTrainer(make_config(images, tmp_path / "base", steps=1)).train()
    wider = config.replace(model=config.model.replace(base_channels=16), init_from=str(source))
    with pytest.raises(ValueError, match="differs from the configured one"):
        AutoencoderTrainer(wider)


def test_auto_precision_is_resolved_from_the_cpu_and_trains(images: Path, tmp_path: Path, monkeypatch) -> None:
    from latent_diffusion import hardware

    config = make_config(images, tmp_path / "auto", steps=1)
    config = config.replace(run=config.run.replace(precision="auto", channels_last=True))
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: None)
    assert AutoencoderTrainer(config).precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: "amx")
    trainer = AutoencoderTrainer(config.replace(run=config.run.replace(run_dir=str(tmp_path / "auto-bf16"))))
    assert trainer.precision == "bf16"
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights
    assert (tmp_path / "auto-bf16" / "final" / "autoencoder.json").parent == trainer.train()
