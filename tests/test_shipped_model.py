"""The shipped models: what each card says is what its folder holds, and the default generates."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from latent_diffusion.pipelines import TextToImage, default_model_folder, load_components, model_hash

FOLDER = default_model_folder()
SHIPPED = sorted(path for path in FOLDER.parent.iterdir() if (path / "model_index.json").is_file())


def test_the_default_is_a_32px_minilm_text_to_image_model() -> None:
    components = load_components(FOLDER)
    assert FOLDER in SHIPPED
    assert components.resolution == 32 and components.conditioner.kind == "minilm"
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
    for figure in ("top-1", "top-5", "PSNR", "SSIM", "rFID", "FID"):
        assert figure in card


@pytest.fixture(scope="module")
def pipe() -> TextToImage:
    return TextToImage.from_pretrained()


def test_default_model_generates_the_same_pixels_twice(pipe: TextToImage) -> None:
    a = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    b = np.asarray(pipe("red apple", steps=3, seed=0, progress=False)[0])
    assert a.shape == (pipe.native_size, pipe.native_size, 3) == (32, 32, 3)
    np.testing.assert_array_equal(a, b)
    c = np.asarray(pipe("rocket", steps=3, seed=0, progress=False)[0])
    assert np.abs(a.astype(int) - c).mean() > 1  # the prompt reaches the picture
