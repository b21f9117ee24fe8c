"""The shipped models: what each card says is what its folder holds, and the defaults generate."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from latent_diffusion import cli
from latent_diffusion.pipelines import TextToImage, Upscale, default_model_folder, load_components, model_hash
from latent_diffusion.pipelines.base import DEFAULT_UPSCALER_NAME
from latent_diffusion.pipelines.png import read_generation_metadata

FOLDER = default_model_folder()
SHIPPED = sorted(path for path in FOLDER.parent.iterdir() if (path / "model_index.json").is_file())


def test_the_default_is_a_64px_minilm_text_to_image_model() -> None:
    components = load_components(FOLDER)
    assert FOLDER in SHIPPED
    assert components.resolution == 64 and components.conditioner.kind == "minilm"
    assert components.autoencoder.downsampling_factor == 4 and components.image_condition == "none"


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda path: path.name)
def test_folder_is_fp16_safetensors_in_tens_of_mb(folder: Path) -> None:
    for name in ("autoencoder", "unet"):
        with safe_open(str(folder / f"{name}.safetensors"), "pt") as weights:
            dtypes = {str(weights.get_slice(k).get_dtype()) for k in weights.keys()}
        assert dtypes == {"F16"}, (name, dtypes)
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 40 * 2**20  # tens of MB in git, not hundreds


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda path: path.name)
def test_model_card_names_these_weights(folder: Path) -> None:
    card = (folder / "README.md").read_text()
    hashes = set(re.findall(r"model hash[^`]*`([0-9a-f]{16})`", card))
    assert hashes == {model_hash(folder)}, "the model card's hash is not the folder's: re-measure and update it"
    kind = load_components(folder).image_condition
    figures = {"none": ("top-1", "top-5", "PSNR", "SSIM", "rFID", "FID"),  # text-to-image: samples and autoencoder
               "low_res": ("bicubic", "PSNR", "SSIM", "perceptual"),       # upscaler: against its baseline
               "masked_image": ("mask-guided", "perceptual", "FID")}[kind]  # inpainting: against its baseline
    for figure in figures:
        assert figure in card, (folder.name, figure)


@pytest.fixture(scope="module")
def pipe() -> TextToImage:
    return TextToImage.from_pretrained()


def test_default_model_generates_the_same_pixels_twice(pipe: TextToImage) -> None:
    a = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    b = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    assert a.shape == (pipe.native_size, pipe.native_size, 3) == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    c = np.asarray(pipe("rocket", steps=3, seed=0, progress=False)[0])
    assert np.abs(a.astype(int) - c).mean() > 1  # the prompt reaches the picture


def test_four_seeds_of_the_default_model_draw_four_different_pictures(pipe: TextToImage) -> None:
    # The model this one replaced (models/emoji-32) drew one picture per name whatever the seed: its
    # four seeds of "red apple" differ by 0.25-0.36 grey levels (mean absolute, pairwise) at these
    # settings. A model that generalizes varies with the noise. Default sampler and steps, guidance 5:
    # what `ldm generate` gives.
    images = [np.asarray(pipe("red apple", guidance=5.0, seed=seed, progress=False)[0]).astype(int)
              for seed in range(4)]
    gaps = [np.abs(images[i] - images[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 5, gaps


def test_the_default_upscaler_makes_16px_pictures_64px_and_is_what_ldm_upscale_uses(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    folder = default_model_folder(DEFAULT_UPSCALER_NAME)
    assert folder in SHIPPED
    pipe = Upscale.from_pretrained()
    assert pipe.model_hash == model_hash(folder) and (pipe.factor, pipe.native_size) == (4, 64)
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    a = np.asarray(pipe(small, steps=3, seed=0, progress=False)[0])
    assert a.shape == (64, 64, 3)
    monkeypatch.chdir(tmp_path)
    small.save("small.png")
    assert cli.main(["upscale", "small.png", "--steps", "3", "--no-progress", "-o", "big.png"]) == 0
    meta = read_generation_metadata("big.png")
    assert meta.model_hash == model_hash(folder)
    # The CLI's default precision is auto (bf16 autocast on CPUs with bf16 units); the API's fp32.
    same = a if meta.precision == "fp32" else np.asarray(
        Upscale.from_pretrained(precision=meta.precision)(small, steps=3, seed=0, progress=False)[0])
    np.testing.assert_array_equal(np.asarray(Image.open("big.png")), same)
