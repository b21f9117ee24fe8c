"""Latent consistency distillation: the guidance input, the loss against LCM's formulas, the trainer
end to end (export, resume, defaults that need no flags), and what a consistency model refuses."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.data import DataConfig
from latent_diffusion.diffusion.consistency import ConsistencyConfig
from latent_diffusion.io import load_tensors
from latent_diffusion.pipelines import TextToImage, load_components, save_components
from latent_diffusion.pipelines.png import read_generation_metadata
from latent_diffusion.training.distill import DistillTrainer, DistillTrainingConfig, teacher_grid
from latent_diffusion.training.settings import OptimConfig, RunConfig
from latent_diffusion.unet import UNet, guidance_embedding

from test_text_to_image import tiny_components

COLORS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "yellow": (240, 220, 10)}


def test_guidance_embedding_is_lcms() -> None:
    """diffusers' get_guidance_scale_embedding (LatentConsistencyModelPipeline), written out."""
    w = torch.tensor([0.0, 1.5, 7.0])
    dim = 10
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    args = w[:, None] * 1000.0 * freqs[None]
    expected = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    torch.testing.assert_close(guidance_embedding(w, dim), expected, rtol=0, atol=0)
    assert guidance_embedding(w, 11).shape == (3, 11) and not guidance_embedding(w, 11)[:, -1].any()


def test_guidance_embedding_matches_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    w = torch.tensor([0.0, 3.0, 7.5])
    theirs = diffusers.LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    torch.testing.assert_close(guidance_embedding(w, 256), theirs, rtol=0, atol=1e-6)


def test_a_zero_guidance_projection_leaves_the_unet_unchanged() -> None:
    teacher = tiny_components().unet
    student = UNet(teacher.config.replace(time_cond_proj_dim=8))
    state = {**teacher.state_dict(), "time_cond_proj.weight": torch.zeros(teacher.config.model_channels, 8)}
    student.load_state_dict(state)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0])
    context = torch.randn(2, 8, teacher.config.context_dim)
    with torch.no_grad():
        expected = teacher(x, t, context=context)
        torch.testing.assert_close(student(x, t, context=context, timestep_cond=torch.randn(2, 8)), expected)
        student.time_cond_proj.weight.normal_()
        assert not torch.allclose(student(x, t, context=context, timestep_cond=torch.randn(2, 8)), expected)
    with pytest.raises(ValueError, match="timestep_cond is required"):
        student(x, t, context=context)
    with pytest.raises(ValueError, match="time_cond_proj_dim=None"):
        teacher(x, t, context=context, timestep_cond=torch.randn(2, 8))


def test_teacher_grid_is_lcms_skipping_grid() -> None:
    # train_lcm_distill_sd_wds.py's DDIMSolver: (arange(1, N + 1) * (T // N)).round() - 1
    assert teacher_grid(1000, 50).tolist() == [20 * (n + 1) - 1 for n in range(50)]
    with pytest.raises(ValueError, match="original_steps"):
        teacher_grid(1000, 2000)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 coloured squares with captions, and a tiny random text-to-image teacher folder."""
    root = tmp_path_factory.mktemp("distill")
    images = root / "images"
    images.mkdir()
    for i in range(16):
        name = list(COLORS)[i % 4]
        pixels = np.full((16, 16, 3), COLORS[name], np.uint8)
        pixels[4 + i % 3: 12, 4:12] = 255
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
        (images / f"{i:02d}.txt").write_text(f"a {name} square")
    save_components(tiny_components(), root / "teacher")
    return root


def make_config(root: Path, run: str, *, steps: int = 4, batch: int = 4, lr: float = 1e-4,
                **extra) -> DistillTrainingConfig:
    return DistillTrainingConfig(
        teacher=str(root / "teacher"),
        data=DataConfig(name="imagefolder", path=str(root / "images"), resolution=16, val_fraction=0.0),
        consistency=ConsistencyConfig(embedding_dim=16, original_steps=50, guidance_min=2.0, guidance_max=6.0,
                                      steps=4, guidance=4.0),
        optim=OptimConfig(lr=lr),
        run=RunConfig(run_dir=str(root / run), max_steps=steps, batch_size=batch, log_every=1, image_every=1000,
                      checkpoint_every=2),
        **extra,
    )


def reference_loss(trainer: DistillTrainer, order: torch.Tensor) -> torch.Tensor:
    """The step's loss as train_lcm_distill_sd_wds.py computes it (its DDIMSolver, boundary
    scalings, guided teacher and pseudo-Huber), from the trainer's draws and networks."""
    cfg = trainer.config
    c = cfg.consistency
    generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + trainer.step)
    shape = (len(order), *trainer.latents.mean.shape[1:])
    latent_noise = torch.randn(shape, generator=generator)
    index = torch.randint(0, c.original_steps, (len(order),), generator=generator)
    noise = torch.randn(shape, generator=generator)
    w = c.guidance_min + (c.guidance_max - c.guidance_min) * torch.rand(len(order), generator=generator)
    choice = torch.randint(0, 1 << 30, (len(order),), generator=generator)
    latents = trainer.latents.draw(order, latent_noise, trainer.teacher.autoencoder.config.scale_factor)
    alphas = trainer.schedule.alphas_cumprod.float()
    ratio = trainer.schedule.num_timesteps // c.original_steps
    ddim_timesteps = (torch.arange(1, c.original_steps + 1) * ratio).round().long() - 1
    alpha_prev = torch.cat([alphas[:1], alphas[ddim_timesteps[:-1]]])
    start = ddim_timesteps[index]
    timesteps = (start - ratio).clamp(min=0)

    def scalings(t):
        scaled = t.float() * c.timestep_scaling
        return (c.sigma_data**2 / (scaled**2 + c.sigma_data**2)).view(-1, 1, 1, 1), \
            (scaled / (scaled**2 + c.sigma_data**2) ** 0.5).view(-1, 1, 1, 1)

    def x0_of(eps, x, t):
        a = alphas[t].view(-1, 1, 1, 1)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    a_start = alphas[start].view(-1, 1, 1, 1)
    noisy = a_start.sqrt() * latents + (1 - a_start).sqrt() * noise
    conditioner = trainer.teacher.conditioner
    captions = trainer.latents.pick_captions(order, choice)
    with torch.no_grad():
        prompt = conditioner(prompts=captions)
        empty = conditioner.unconditional(len(order))
        w_emb = guidance_embedding(w - 1.0, c.embedding_dim)
        skip_s, out_s = scalings(start)
        student_eps = trainer.student(noisy, start, **prompt, timestep_cond=w_emb)
        model_pred = skip_s * noisy + out_s * x0_of(student_eps, noisy, start)
        eps_c = trainer.teacher.unet(noisy, start, **prompt)
        eps_u = trainer.teacher.unet(noisy, start, **empty)
        x0_c, x0_u = x0_of(eps_c, noisy, start), x0_of(eps_u, noisy, start)
        # The script's w multiplies (cond - uncond) on top of cond: its w is our scale - 1.
        x0 = x0_c + (w - 1.0).view(-1, 1, 1, 1) * (x0_c - x0_u)
        eps = eps_c + (w - 1.0).view(-1, 1, 1, 1) * (eps_c - eps_u)
        prev = alpha_prev[index].view(-1, 1, 1, 1)
        x_prev = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
        skip, out = scalings(timesteps)
        target_eps = trainer.target(x_prev, timesteps, **prompt, timestep_cond=w_emb)
        target = skip * x_prev + out * x0_of(target_eps, x_prev, timesteps)
    return torch.mean(torch.sqrt((model_pred - target) ** 2 + cfg.huber_c**2) - cfg.huber_c)


def test_the_loss_is_lcms(workspace: Path) -> None:
    trainer = DistillTrainer(make_config(workspace, "loss"))
    for step in (0, 3):  # the target lags the student once it has trained
        trainer.step = step
        order = trainer._order(step)
        with torch.no_grad():
            ours = trainer.loss(order)
        torch.testing.assert_close(ours, reference_loss(trainer, order), rtol=1e-5, atol=1e-7)
        trainer.train_step()


def test_trains_exports_a_model_that_samples_with_no_flags(workspace: Path) -> None:
    final = DistillTrainer(make_config(workspace, "run", steps=30, lr=1e-3)).train()
    components = load_components(final)
    assert components.consistency == make_config(workspace, "run").consistency
    assert components.unet.config.time_cond_proj_dim == 16
    pipe = TextToImage.from_pretrained(final)
    result = pipe("a red square", seed=1, progress=False)
    meta = result.metadata[0]
    assert (meta.sampler, meta.steps, meta.guidance) == ("lcm", 4, 4.0)
    assert pipe.sampling_defaults == {"sampler": "lcm", "steps": 4, "guidance": 4.0}
    # The guidance scale reaches the picture through the embedding, not through a second pass.
    other = pipe("a red square", seed=1, guidance=6.0, progress=False)
    assert np.abs(np.asarray(result[0], int) - np.asarray(other[0], int)).mean() > 0
    losses = [r["loss"] for r in _metrics(workspace / "run")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def _metrics(run: Path) -> list[dict]:
    from latent_diffusion.training.logging import read_metrics

    return read_metrics(run)


def test_resume_is_bit_identical(workspace: Path) -> None:
    straight = DistillTrainer(make_config(workspace, "straight", steps=4)).train()
    DistillTrainer(make_config(workspace, "resumed", steps=2)).train()
    resumed = DistillTrainer(make_config(workspace, "resumed", steps=4), resume=True)
    assert resumed.step == 2
    final = resumed.train()
    a, b = load_tensors(straight / "unet.safetensors"), load_tensors(final / "unet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_distillations_share_a_latent_cache_dir(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = workspace / "shared-cache"
    first = DistillTrainer(make_config(workspace, "cached-1", steps=1, cache_dir=str(shared)))
    files = sorted(p.name for p in shared.iterdir())
    assert len(files) == 2 and not (workspace / "cached-1" / "cache").exists()
    # The second run reads the file the first one wrote: it would fail if it encoded a picture.
    def no_encoding(*args, **kwargs):
        raise AssertionError("the shared latent cache was encoded again")

    monkeypatch.setattr(Autoencoder, "encode", no_encoding)
    second = DistillTrainer(make_config(workspace, "cached-2", steps=1, cache_dir=str(shared)))
    assert sorted(p.name for p in shared.iterdir()) == files
    assert torch.equal(second.latents.mean, first.latents.mean)


def test_what_a_consistency_model_refuses(workspace: Path) -> None:
    final = workspace / "run" / "final"
    if not final.is_dir():
        DistillTrainer(make_config(workspace, "run", steps=2)).train()
    pipe = TextToImage.from_pretrained(final)
    with pytest.raises(ValueError, match="--sampler lcm"):
        pipe("a red square", sampler="euler", progress=False)
    with pytest.raises(ValueError, match=r"outside the range .*\[2, 6\]"):
        pipe("a red square", guidance=9.0, progress=False)
    with pytest.raises(ValueError, match="at most that many"):
        pipe("a red square", steps=60, progress=False)
    with pytest.raises(ValueError, match="rescale"):
        pipe("a red square", rescale=0.5, progress=False)


def test_image_to_image_and_inpainting_sample_a_consistency_model(workspace: Path) -> None:
    """The image tasks take the folder's lcm sampling too: strength 0 gives the autoencoder's
    reconstruction back, 0.5 runs half of the 4 steps and redraws; masked inpainting keeps the
    picture outside the hole and redraws inside it."""
    from PIL import Image

    from latent_diffusion.model.components import encode_images
    from latent_diffusion.pipelines import ImageToImage, Inpaint
    from latent_diffusion.pipelines.images import image_to_tensor
    from latent_diffusion.sampling import latent_keep_mask

    final = workspace / "run" / "final"
    if not final.is_dir():
        DistillTrainer(make_config(workspace, "run", steps=2)).train()
    source = TextToImage.from_pretrained(final)("a red square", seed=2, progress=False)[0]
    img2img = ImageToImage.from_pretrained(final)
    kept = img2img(source, "a blue square", strength=0.0, seed=0, progress=False)
    changed = img2img(source, "a blue square", strength=0.5, seed=0, progress=False)
    meta = changed.metadata[0]
    assert (meta.sampler, meta.steps, meta.guidance, meta.strength) == ("lcm", 4, 4.0, 0.5)
    kept_pixels, changed_pixels = (np.asarray(r[0], int) for r in (kept, changed))
    assert np.abs(kept_pixels - changed_pixels).mean() > 1.0
    side = source.size[0]
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4: 3 * side // 4, side // 4: 3 * side // 4] = 255
    filled = Inpaint.from_pretrained(final)(source, Image.fromarray(mask), "a blue square", seed=0, method="masked",
                                            progress=False)
    assert filled.metadata[0].sampler == "lcm"
    # In latent space the kept region is the source's latents exactly (the tiny decoder's receptive
    # field spans the 16 px picture, so pixels are compared inside the hole only).
    components = Inpaint.from_pretrained(final).components
    hole = torch.from_numpy(mask > 0).float()[None, None]
    keep = latent_keep_mask(hole, components.autoencoder.downsampling_factor).bool().expand_as(filled.latents)
    init = encode_images(components, image_to_tensor(source, side))
    assert torch.equal(filled.latents[keep], init.expand_as(filled.latents)[keep])
    assert (filled.latents - init)[~keep].abs().mean() > 0.05  # redrawn
    assert np.abs(np.asarray(filled[0], int) - kept_pixels)[mask > 0].mean() > 3.0


def test_a_teacher_that_is_not_text_to_image_is_refused_before_anything_is_written(workspace: Path) -> None:
    config = make_config(workspace, "never")
    save_components(tiny_components(kind="none"), workspace / "unconditional")
    with pytest.raises(ValueError, match="not a text-to-image model"):
        DistillTrainer(config.replace(teacher=str(workspace / "unconditional")))
    assert not (workspace / "never").exists()
    with pytest.raises(ValueError, match="grad_accum"):
        DistillTrainer(config.replace(optim=OptimConfig(grad_accum=2)))
    with pytest.raises(ValueError, match="preview.sampler='euler'"):
        config.replace(preview={"sampler": "euler"})
    with pytest.raises(ValueError, match="outside the range"):
        config.replace(preview={"sampler": "lcm", "steps": 4, "guidance": 12.0})


def test_the_png_metadata_reproduces_a_consistency_image(workspace: Path, tmp_path: Path) -> None:
    from latent_diffusion.pipelines import write_png

    final = workspace / "run" / "final"
    if not final.is_dir():
        DistillTrainer(make_config(workspace, "run", steps=2)).train()
    pipe = TextToImage.from_pretrained(final)
    result = pipe("a blue square", seed=3, progress=False)
    path = write_png(tmp_path / "x.png", result[0], result.metadata[0])
    meta = read_generation_metadata(path)
    again = pipe(meta.prompts[0], seed=meta.seed, steps=meta.steps, sampler=meta.sampler, guidance=meta.guidance,
                 progress=False)
    np.testing.assert_array_equal(np.asarray(result[0]), np.asarray(again[0]))


def test_ldm_eval_samples_a_consistency_model_as_it_samples(workspace: Path, tmp_path: Path) -> None:
    from latent_diffusion.evaluation.runner import evaluate
    from latent_diffusion.evaluation.settings import EvalSettings

    final = workspace / "run" / "final"
    if not final.is_dir():
        DistillTrainer(make_config(workspace, "run", steps=2)).train()

    def pooled(images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images.float(), 2).flatten(1)

    settings = EvalSettings(model=str(final), data="imagefolder", data_path=str(workspace / "images"), split="all",
                            metrics=("fid",), num_samples=4, batch_size=4)
    result = evaluate(settings, extractor=pooled, cache_dir=tmp_path)
    chosen = result["settings"]
    assert (chosen["sampler"], chosen["steps"], chosen["guidance"], chosen["spacing"]) == ("lcm", 4, 4.0, "lcm")
    assert math.isfinite(result["metrics"]["generation"]["fid"])
    with pytest.raises(ValueError, match="--sampler lcm"):
        evaluate(settings.replace(sampler="euler"), extractor=pooled, cache_dir=tmp_path)
