"""Image-to-image and inpainting: noise levels against diffusers, exactness, masks, errors, CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_text_to_image import tiny_components

from latent_diffusion import cli
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule
from latent_diffusion.model.components import decode_images, encode_images
from latent_diffusion.pipelines import ImageToImage, Inpaint, read_generation_metadata, save_components
from latent_diffusion.pipelines.images import image_to_tensor
from latent_diffusion.pixels import images_to_pil
from latent_diffusion.sampling import (
    SAMPLERS,
    MaskedDenoiser,
    get_sampler,
    get_sigmas,
    latent_keep_mask,
    sigmas_for_strength,
)
from latent_diffusion.unet import UNet

FAST = dict(steps=4, progress=False)


def picture(seed: int = 0, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def box_mask(size: int = 16, top: int = 4, left: int = 6, height: int = 6, width: int = 5) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + height, left:left + width] = 255
    return Image.fromarray(mask)


@pytest.fixture(scope="module")
def components():
    return tiny_components()


# --- noise levels ------------------------------------------------------------------------------
@pytest.mark.parametrize("steps, strength", [(25, 0.5), (25, 0.75), (10, 0.33), (7, 1.0), (20, 0.0), (5, 0.99)])
def test_strength_keeps_the_steps_diffusers_img2img_keeps(steps: int, strength: float) -> None:
    from diffusers import EulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
        StableDiffusionImg2ImgPipeline,
    )

    config = DiffusionConfig()
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=config.beta_start,
                                       beta_end=config.beta_end, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    timesteps, kept = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler),
                                                                   steps, strength, "cpu")
    ours = sigmas_for_strength(get_sigmas(NoiseSchedule.from_config(config), steps, "trailing"), strength)
    assert len(ours) - 1 == kept == len(timesteps)
    expected = scheduler.sigmas[len(scheduler.sigmas) - 1 - kept:].double()
    torch.testing.assert_close(ours, expected, rtol=5e-5, atol=0)


def test_strength_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        sigmas_for_strength(torch.tensor([2.0, 1.0, 0.0]), 1.5)


# --- the masked denoiser -----------------------------------------------------------------------
def gaussian_denoiser(mean: torch.Tensor):
    """Exact denoiser of N(mean, I) data: D(x, s) = (x + s^2 mean) / (1 + s^2)."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return (x + s2 * mean) / (1 + s2)
    return denoise


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_ends_on_the_original_in_the_kept_region(sampler: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    keep = torch.ones(2, 1, 8, 8)
    keep[:, :, 2:6, 3:7] = 0
    sigmas = get_sigmas(NoiseSchedule.from_config(DiffusionConfig()), 6, "karras")
    inner = gaussian_denoiser(torch.full((1, 3, 1, 1), 3.0))
    denoiser = MaskedDenoiser(inner, x0, keep, noise)
    x = get_sampler(sampler)(denoiser, x0 + sigmas[0] * noise, sigmas, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(x * keep, x0 * keep, atol=1e-5, rtol=0)
    # The hole is drawn by the model: pulled far from the original towards the data mean 3.
    assert float((x - x0)[:, :, 2:6, 3:7].abs().mean()) > 1.0


def test_deterministic_samplers_keep_the_known_region_on_the_forward_process() -> None:
    """Euler's x on the kept region is exactly x0 + sigma * noise at every step."""
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g)
    keep = (torch.rand(1, 1, 4, 4, generator=g) > 0.5).float()
    sigmas = get_sigmas(NoiseSchedule.from_config(DiffusionConfig()), 8, "trailing")
    seen = []
    denoiser = MaskedDenoiser(gaussian_denoiser(torch.zeros(1)), x0, keep, noise)
    get_sampler("euler")(denoiser, x0 + sigmas[0] * noise, sigmas, callback=seen.append)
    assert len(seen) == len(sigmas) - 1  # one callback per step, or the loop below checks nothing
    for info in seen:
        torch.testing.assert_close(info["x"] * keep, (x0 + info["sigma"].float() * noise) * keep, atol=1e-5, rtol=0)


def test_masked_denoiser_is_the_model_in_the_hole_and_the_original_outside() -> None:
    g = torch.Generator().manual_seed(3)
    x0, noise, x = (torch.randn(1, 2, 4, 4, generator=g) for _ in range(3))
    inner = gaussian_denoiser(torch.ones(1))
    sigma = torch.tensor([1.5])
    hole_everywhere = MaskedDenoiser(inner, x0, torch.zeros(1, 1, 4, 4), noise)
    torch.testing.assert_close(hole_everywhere(x, sigma), inner(x, sigma))
    keep_everywhere = MaskedDenoiser(inner, x0, torch.ones(1, 1, 4, 4), noise)
    torch.testing.assert_close(keep_everywhere(x, sigma), x0)
    with pytest.raises(ValueError, match="keep mask"):
        MaskedDenoiser(inner, x0, torch.ones(1, 1, 2, 2), noise)
    with pytest.raises(ValueError, match="only 0"):
        MaskedDenoiser(inner, x0, torch.full((1, 1, 4, 4), 0.5), noise)


def test_latent_mask_repaints_every_cell_that_touches_the_hole() -> None:
    hole = torch.zeros(1, 1, 8, 8)
    hole[0, 0, 3, 4] = 1  # one pixel: cell (1, 2) at f=2
    hole[0, 0, 6:8, 0:2] = 1  # a whole cell (3, 0)
    keep = latent_keep_mask(hole, 2)
    expected = torch.ones(1, 1, 4, 4)
    expected[0, 0, 1, 2] = expected[0, 0, 3, 0] = 0
    torch.testing.assert_close(keep, expected)
    torch.testing.assert_close(latent_keep_mask(hole, 1), 1 - hole)


# --- image-to-image ------------------------------------------------------------------------------
def test_strength_zero_returns_the_reconstruction(components) -> None:
    pipe = ImageToImage.from_pretrained(components)
    image = picture()
    result = pipe(image, "a cat", strength=0.0, **FAST)
    pixels = image_to_tensor(image, 16)
    expected = images_to_pil(decode_images(components, encode_images(components, pixels)))[0]
    np.testing.assert_array_equal(np.asarray(result[0]), np.asarray(expected))


def test_img2img_is_the_sampler_run_from_the_noised_image(components) -> None:
    """The pipeline equals its recipe written out: encode, noise to sigmas[0] of the tail, sample."""
    from latent_diffusion.model.reverse_process import sampling_sigmas
    from latent_diffusion.sampling import CFGDenoiser, DiscreteDenoiser

    pipe = ImageToImage.from_pretrained(components)
    image = picture(1)
    got = pipe(image, "a dog", strength=0.5, steps=6, sampler="euler", guidance=3.0, seed=4, progress=False)
    init = encode_images(components, image_to_tensor(image, 16))
    sigmas = sampling_sigmas(components, 6, "euler", strength=0.5)
    assert len(sigmas) == 4  # int(6 * 0.5) = 3 steps
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cond, uncond = components.conditioner(prompts=["a dog"]), components.conditioner.unconditional(1)
    denoiser = CFGDenoiser(DiscreteDenoiser(components.unet, components.schedule, "eps"), scale=3.0)
    latents = get_sampler("euler")(denoiser, init + sigmas[0] * noise, sigmas,
                                   extra_args={"cond": cond, "uncond": uncond})
    torch.testing.assert_close(got.latents, latents)
    meta = got.metadata[0]
    assert (meta.task, meta.strength, meta.steps) == ("img2img", 0.5, 6) and len(meta.image_hash) == 64


def test_img2img_is_deterministic_and_strength_matters(components) -> None:
    pipe = ImageToImage.from_pretrained(components)
    image = picture(2)
    a = np.asarray(pipe(image, "a cat", strength=0.6, seed=1, **FAST)[0])
    b = np.asarray(pipe(image, "a cat", strength=0.6, seed=1, **FAST)[0])
    c = np.asarray(pipe(image, "a cat", strength=1.0, seed=1, **FAST)[0])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_img2img_resizes_to_the_model_and_refuses_what_it_cannot_use(components) -> None:
    pipe = ImageToImage.from_pretrained(components)
    assert pipe(picture(size=40), "x", **FAST)[0].size == (16, 16)
    with pytest.raises(ValueError, match="square"):
        pipe(Image.new("RGB", (16, 12)), "x", **FAST)
    with pytest.raises(ValueError, match="4 channels but the model makes 3-channel"):
        pipe(torch.zeros(4, 16, 16), "x", **FAST)
    with pytest.raises(ValueError, match="strength"):
        pipe(picture(), "x", strength=-0.1, **FAST)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipe("no/such/file.png", "x", **FAST)


def test_rgba_input_is_composited_on_white_like_the_training_data(components) -> None:
    pipe = ImageToImage.from_pretrained(components)
    clear = Image.new("RGBA", (16, 16), (10, 20, 30, 0))
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    np.testing.assert_array_equal(np.asarray(pipe(clear, "x", strength=0.0, **FAST)[0]),
                                  np.asarray(pipe(white, "x", strength=0.0, **FAST)[0]))


# --- inpainting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_ancestral"])
def test_inpainting_keeps_every_unmasked_pixel_exactly(components, sampler: str) -> None:
    pipe = Inpaint.from_pretrained(components)
    image, mask = picture(3), box_mask()
    result = pipe(image, mask, "a red heart", num_images=2, sampler=sampler, **FAST)
    hole = np.asarray(mask) == 255
    for out in result:
        out = np.asarray(out)
        np.testing.assert_array_equal(out[~hole], np.asarray(image)[~hole])
        assert np.abs(out[hole].astype(int) - np.asarray(image)[hole]).mean() > 5  # the hole was redrawn
    assert result.metadata[0].task == "inpaint-masked" and len(result.metadata[0].mask_hash) == 64


def test_inpainting_latents_keep_the_encoded_original_outside_the_hole(components) -> None:
    pipe = Inpaint.from_pretrained(components)
    image, mask = picture(4), box_mask(top=0, left=0, height=8, width=8)
    result = pipe(image, mask, "x", **FAST)
    init = encode_images(components, image_to_tensor(image, 16))
    keep = torch.ones(1, 1, 8, 8)
    keep[..., :4, :4] = 0  # f = 2: the 8x8 pixel box is the 4x4 latent corner
    torch.testing.assert_close(result.latents * keep, init * keep, atol=1e-5, rtol=0)


def concat_components():
    """A tiny inpainting model: the text-to-image UNet widened by 1 + 4 input channels."""
    base = tiny_components()
    config = base.unet.config.replace(concat_channels=5)
    torch.manual_seed(1)
    unet = UNet(config)
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return type(base)(base.autoencoder, unet, base.conditioner, base.diffusion, base.resolution,
                      image_condition="masked_image")


def test_inpainting_model_gets_the_mask_and_the_masked_image(tmp_path: Path) -> None:
    components = concat_components()
    pipe = Inpaint.from_pretrained(components)
    seen = []
    hook = components.unet.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    image, mask = picture(5), box_mask()
    result = pipe(image, mask, "x", guidance=2.0, **FAST)
    hook.remove()
    stacked = seen[0]
    assert stacked.shape[1] == 4 + 1 + 4 and result.metadata[0].task == "inpaint-concat"
    hole = torch.from_numpy(np.asarray(mask) / 255.0).float()[None, None]
    small = torch.nn.functional.interpolate(hole, size=(8, 8), mode="nearest")
    torch.testing.assert_close(stacked[:1, 4:5], small)
    masked = image_to_tensor(image, 16) * (1 - hole)
    torch.testing.assert_close(stacked[:1, 5:], encode_images(components, masked), atol=1e-6, rtol=0)
    out = np.asarray(result[0])
    np.testing.assert_array_equal(out[np.asarray(mask) == 0], np.asarray(image)[np.asarray(mask) == 0])
    with pytest.raises(ValueError, match="method='masked' needs a text-to-image model"):
        pipe(image, mask, "x", method="masked", **FAST)
    with pytest.raises(ValueError, match="method='concat' needs an inpainting model"):
        Inpaint.from_pretrained(tiny_components())(image, mask, "x", method="concat", **FAST)


@pytest.mark.parametrize("mask, match", [
    (box_mask(size=12), "mask is 12x12 but the image is 16x16"),
    (Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)), "mask is not binary: 256 pixels"),
    (Image.new("L", (16, 16), 0), "all black"),
    (torch.full((16, 16), 0.5), "neither 0 nor 1"),
    (torch.zeros(2, 3, 16, 16), "mask tensor has shape"),
])
def test_bad_masks_are_refused(components, mask, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Inpaint.from_pretrained(components)(picture(), mask, "x", **FAST)


# --- command line ------------------------------------------------------------------------------
@pytest.fixture()
def files(tmp_path: Path, monkeypatch, components):
    monkeypatch.chdir(tmp_path)
    save_components(components, tmp_path / "model")
    picture(6).save("in.png")
    box_mask().save("mask.png")
    box_mask(size=8).save("small-mask.png")
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save("grey-mask.png")
    (tmp_path / "not-an-image.png").write_text("hello")
    return tmp_path


def run(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main([*args, "--model", "model", "--steps", "3", "--no-progress"])
    return rc, capsys.readouterr().err


def test_cli_img2img_and_inpaint_write_pngs_with_their_inputs(files: Path, capsys) -> None:
    rc, err = run(capsys, "img2img", "--image", "in.png", "--prompt", "a cat", "--strength", "0.5", "-o", "a.png")
    assert rc == 0, err
    meta = read_generation_metadata("a.png")
    assert (meta.task, meta.strength, meta.prompt) == ("img2img", 0.5, "a cat")
    again = ImageToImage.from_pretrained(files / "model", precision=meta.precision)("in.png", **meta.call_arguments(),
                                                                              progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open("a.png")), np.asarray(again[0]))
    rc, err = run(capsys, "inpaint", "--image", "in.png", "--mask", "mask.png", "--prompt", "x", "-o", "b.png")
    assert rc == 0, err
    assert read_generation_metadata("b.png").task == "inpaint-masked"


@pytest.mark.parametrize("args, match", [
    (["img2img", "--image", "missing.png"], "--image 'missing.png' does not exist"),
    (["img2img", "--image", "not-an-image.png"], "is not a readable image"),
    (["img2img", "--image", "in.png", "--strength", "2"], "strength=2.0 must lie in [0.0, 1.0]"),
    (["inpaint", "--image", "in.png", "--mask", "small-mask.png"], "mask is 8x8 but the image is 16x16"),
    (["inpaint", "--image", "in.png", "--mask", "grey-mask.png"], "mask is not binary"),
    (["inpaint", "--image", "in.png", "--mask", "mask.png", "--method", "concat"], "needs an inpainting model"),
    (["upscale", "in.png"], "Upscale cannot use this model"),
])
def test_cli_bad_input_is_one_line_exit_2_and_no_file(files: Path, capsys, args: list[str], match: str) -> None:
    before = sorted(p.name for p in files.iterdir())
    rc, err = run(capsys, *args, "-o", "out.png")
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in files.iterdir()) == before


def test_vae_tiling_in_the_pipeline_matches_untiled_decoding_closely(components) -> None:
    from latent_diffusion.pipelines import TextToImage

    pipe = TextToImage.from_pretrained(components)
    whole = pipe("x", size=32, **FAST)
    pipe.enable_vae_tiling(tile=8)  # 16 latents per side: 4 overlapping tiles
    tiled = pipe("x", size=32, **FAST)
    torch.testing.assert_close(tiled.latents, whole.latents)
    diff = np.abs(np.asarray(tiled[0]).astype(int) - np.asarray(whole[0]))
    assert diff.max() > 0  # the tiled path really ran
    assert diff.mean() < 8  # a random decoder is not local, so seams differ, but only slightly
