"""Image-conditioned models (inpainting, super-resolution): masks, initialization, training, pipelines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train_diffusion import make_config, unet_weights, workspace  # noqa: F401  (fixture)

from latent_diffusion.conditioning.image import back_project, degrade, low_res_condition, random_holes
from latent_diffusion.model.folder import load_components
from latent_diffusion.pipelines import Inpaint, TextToImage, Upscale
from latent_diffusion.training.diffusion import DiffusionTrainer
from latent_diffusion.training.init_weights import init_unet_from
from latent_diffusion.unet import UNet


def test_random_holes_are_seeded_non_empty_and_mixed() -> None:
    a = random_holes(200, 32, torch.Generator().manual_seed(0))
    b = random_holes(200, 32, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert a.shape == (200, 1, 32, 32) and set(a.unique().tolist()) == {0.0, 1.0}
    covered = a.mean(dim=(1, 2, 3))
    assert bool((covered > 0).all())
    whole = float((covered == 1).float().mean())
    assert 0.04 < whole < 0.18  # whole_prob 0.1, 200 draws: +-3 standard errors
    assert float((covered < 1).float().mean()) > 0.8


def test_degrade_and_low_res_condition() -> None:
    flat = torch.full((2, 3, 64, 64), 0.25)
    small = degrade(flat, 4)
    assert small.shape == (2, 3, 16, 16)
    torch.testing.assert_close(small, torch.full_like(small, 0.25))
    assert low_res_condition(small, 16) is small
    assert low_res_condition(small, 32).shape == (2, 3, 32, 32)


def smooth_pictures(seed: int, size: int = 32) -> torch.Tensor:
    """Random pictures with detail at every scale, in [-0.8, 0.8] (no clamping in play)."""
    noise = torch.randn(2, 3, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    coarse = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    fine = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return (0.5 * coarse + 0.2 * fine).tanh() * 0.8


def test_back_projection_keeps_a_consistent_picture_and_pulls_others_onto_the_input() -> None:
    truth = smooth_pictures(0)
    small = degrade(truth, 4)
    # A picture that already degrades to the input is a fixed point.
    torch.testing.assert_close(back_project(truth, small), truth, rtol=0, atol=0)
    # What an autoencoder does to a picture: a colour shift and blur. Back-projection undoes the
    # part the input determines: the residual shrinks round by round and the truth gets closer.
    guess = torch.nn.functional.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False) + 0.1
    residual = [float((degrade(back_project(guess, small, rounds), 4) - small).abs().mean()) for rounds in range(4)]
    assert residual[0] > 0.09 and all(b < a for a, b in zip(residual, residual[1:])) and residual[3] < 0.01
    error = [float((back_project(guess, small, rounds) - truth).pow(2).mean()) for rounds in (0, 3)]
    assert error[0] - error[1] > 0.8 * 0.1**2  # the shift's share of the squared error is gone
    with pytest.raises(ValueError, match="not a whole multiple"):
        back_project(truth[..., :30, :30], small)


def inpaint_config(root: Path, run: str, steps: int = 4, **extra):
    config = make_config(root, run, steps=steps, **extra)
    return config.replace(unet=config.unet.replace(concat_channels=5), image_condition="masked_image")


def sr_config(root: Path, run: str, steps: int = 4):
    config = make_config(root, run, steps=steps)
    config = config.replace(unet=config.unet.replace(concat_channels=3), image_condition="low_res",
                            low_res_factor=2)
    return config.replace(conditioner=config.conditioner.replace(kind="none"),
                          unet=config.unet.replace(context_dim=None, concat_channels=3),
                          preview=config.preview.replace(prompts=("", "")),
                          run=config.run.replace(image_every=2))  # unconditional previews run too


def test_init_from_widens_the_input_and_keeps_the_function(workspace: Path) -> None:  # noqa: F811
    text_model = DiffusionTrainer(make_config(workspace, "t2i-for-init", steps=2)).train()
    config = inpaint_config(workspace, "init-check").replace(init_from=str(text_model))
    wide = UNet(config.unet)
    init_unet_from(wide, text_model)
    source = unet_weights(text_model)
    for key, value in wide.state_dict().items():
        if key == "input_blocks.0.0.weight":
            torch.testing.assert_close(value[:, :4], source[key])
            assert not value[:, 4:].any()
        else:
            torch.testing.assert_close(value, source[key])
    narrow = load_components(text_model).unet
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    context = torch.randn(2, 3, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x, t, context=context, concat=torch.randn(2, 5, 8, 8)),
                                   narrow(x, t, context=context), atol=1e-6, rtol=0)
    other = config.replace(unet=config.unet.replace(model_channels=32))
    with pytest.raises(ValueError, match="differs from the configured one"):
        init_unet_from(UNet(other.unet), text_model)
    with pytest.raises(FileNotFoundError, match="has no unet.json"):
        init_unet_from(wide, workspace)


def test_concat_channels_that_do_not_fit_are_refused_before_training(workspace: Path) -> None:  # noqa: F811
    config = inpaint_config(workspace, "bad-concat")
    with pytest.raises(ValueError, match="image_condition='masked_image' needs unet.concat_channels=5"):
        DiffusionTrainer(config.replace(unet=config.unet.replace(concat_channels=3)))
    assert not (workspace / "bad-concat" / "checkpoints").exists()


def test_inpainting_model_trains_resumes_exactly_and_inpaints(workspace: Path) -> None:  # noqa: F811
    straight = DiffusionTrainer(inpaint_config(workspace, "inpaint-straight")).train()
    DiffusionTrainer(inpaint_config(workspace, "inpaint-resumed", steps=2)).train()
    resumed = DiffusionTrainer(inpaint_config(workspace, "inpaint-resumed"), resume=True).train()
    a, b = unet_weights(straight), unet_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    components = load_components(straight)
    assert components.image_condition == "masked_image" and components.unet.config.concat_channels == 5
    with pytest.raises(ValueError, match="TextToImage cannot use this model.*Inpaint"):
        TextToImage.from_pretrained(straight)
    image = Image.open(workspace / "images" / "00.png")
    mask = np.zeros((16, 16), np.uint8)
    mask[2:9, 3:12] = 255
    result = Inpaint.from_pretrained(straight)(image, Image.fromarray(mask), "a red square", steps=3, progress=False)
    assert result.metadata[0].task == "inpaint-concat"
    out = np.asarray(result[0])
    np.testing.assert_array_equal(out[mask == 0], np.asarray(image.convert("RGB"))[mask == 0])


def test_super_resolution_model_trains_and_upscales(workspace: Path) -> None:  # noqa: F811
    folder = DiffusionTrainer(sr_config(workspace, "sr")).train()
    components = load_components(folder)
    assert (components.image_condition, components.low_res_factor) == ("low_res", 2)
    pipe = Upscale.from_pretrained(folder)
    small = Image.open(workspace / "images" / "03.png").resize((8, 8), Image.Resampling.BICUBIC)
    a = pipe(small, steps=3, seed=1, progress=False)
    b = pipe(small, steps=3, seed=1, progress=False)
    assert a[0].size == (16, 16) and a.metadata[0].task == "upscale"
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    # The low-resolution input reaches the UNet: another input, another output.
    other = pipe(Image.new("RGB", (8, 8), (0, 0, 0)), steps=3, seed=1, progress=False)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(other[0]))
    # Back-projection (on by default) makes the output degrade to the input more closely than
    # the decoder's output does, and is recorded so the call can be made again.
    raw = pipe(small, steps=3, seed=1, progress=False, back_projection=0)
    given = torch.from_numpy(np.asarray(small.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

    def mismatch(result) -> float:
        out = torch.from_numpy(np.asarray(result[0], np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        return float((degrade(out, 2) - given).abs().mean())

    assert mismatch(a) < 0.5 * mismatch(raw)
    assert a.metadata[0].back_projection == 3 and a.metadata[0].call_arguments()["back_projection"] == 3
    assert raw.metadata[0].call_arguments()["back_projection"] == 0
    with pytest.raises(ValueError, match=r"back_projection=-1 must be an integer in \[0, 100\]"):
        pipe(small, steps=3, progress=False, back_projection=-1)
    with pytest.raises(ValueError, match="a 5x5 input cannot be upscaled x2"):
        pipe(Image.new("RGB", (5, 5)), steps=3, progress=False)
    with pytest.raises(ValueError, match="Upscale cannot use this model"):
        Upscale.from_pretrained(DiffusionTrainer(make_config(workspace, "t2i-not-sr", steps=1)).train())
