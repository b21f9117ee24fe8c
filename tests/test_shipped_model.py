"""The shipped default model: what the card says is what the folder holds, and it generates."""

from __future__ import annotations

import re

import numpy as np
import pytest
from safetensors import safe_open

from latent_diffusion.pipelines import TextToImage, default_model_folder, load_components, model_hash

FOLDER = default_model_folder()


def test_folder_is_fp16_safetensors_of_a_64px_minilm_model() -> None:
    components = load_components(FOLDER)
    assert components.resolution == 64 and components.conditioner.kind == "minilm"
    assert components.autoencoder.downsampling_factor == 4 and components.image_condition == "none"
    for name in ("autoencoder", "unet"):
        with safe_open(str(FOLDER / f"{name}.safetensors"), "pt") as weights:
            dtypes = {str(weights.get_slice(k).get_dtype()) for k in weights.keys()}
        assert dtypes == {"F16"}, (name, dtypes)
    total = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert total < 40 * 2**20  # tens of MB in git, not hundreds


def test_model_card_names_these_weights() -> None:
    card = (FOLDER / "README.md").read_text()
    hashes = set(re.findall(r"model hash[^`]*`([0-9a-f]{16})`", card))
    assert hashes == {model_hash(FOLDER)}, "the model card's hash is not the folder's: re-measure and update it"
    for figure in ("top-1", "top-5", "PSNR", "SSIM", "rFID", "FID"):
        assert figure in card


@pytest.fixture(scope="module")
def pipe() -> TextToImage:
    return TextToImage.from_pretrained()


def test_default_model_generates_the_same_pixels_twice(pipe: TextToImage) -> None:
    a = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    b = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)
    c = np.asarray(pipe("rocket", steps=3, seed=0, progress=False)[0])
    assert np.abs(a.astype(int) - c).mean() > 1  # the prompt reaches the picture
