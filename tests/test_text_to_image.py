"""TextToImage: determinism, wiring against the building blocks, arguments, metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import latent_diffusion
from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.model.components import decode_images
from latent_diffusion.model.reverse_process import sample_latents
from latent_diffusion.pipelines import (
    DiffusionComponents,
    GenerationMetadata,
    TextToImage,
    model_hash,
    read_generation_metadata,
    save_components,
    write_png,
)
from latent_diffusion.pipelines import base as pipeline_base
from latent_diffusion.pixels import images_to_pil
from latent_diffusion.unet import UNet, UNetConfig

FAST = dict(steps=3, progress=False)


def tiny_components(kind: str = "transformer", seed: int = 0, resolution: int = 16,
                    **conditioner: object) -> DiffusionComponents:
    """A random model small enough to sample in milliseconds: f=2 autoencoder, 2-level UNet."""
    torch.manual_seed(seed)
    autoencoder = Autoencoder(AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                                z_channels=4, norm_groups=4, scale_factor=0.5))
    conditioner = build_conditioner(ConditionerConfig(kind=kind, max_length=8, transformer_width=16,
                                                      transformer_depth=1, transformer_heads=2,
                                                      **conditioner))
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
                           num_res_blocks=1, attention_levels=(1,), num_heads=2,
                           context_dim=conditioner.context_dim, norm_groups=8))
    # A fresh UNet's output and attention projections are zero-initialised, which would make it
    # ignore its input and its condition; random weights there make every argument matter.
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return DiffusionComponents(autoencoder, unet, conditioner, DiffusionConfig(), resolution)


def tiny_model_folder(folder: Path, kind: str = "transformer") -> Path:
    """``tiny_components`` written as a model folder."""
    return save_components(tiny_components(kind), folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def pipe(folder: Path) -> TextToImage:
    return TextToImage.from_pretrained(folder)


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result])


def test_same_arguments_give_identical_pixels(pipe: TextToImage, folder: Path) -> None:
    a = pixels(pipe("a red heart", num_images=2, seed=5, **FAST))
    b = pixels(pipe("a red heart", num_images=2, seed=5, **FAST))
    reloaded = pixels(TextToImage.from_pretrained(folder)("a red heart", num_images=2, seed=5, **FAST))
    in_memory = pixels(TextToImage.from_pretrained(tiny_components())("a red heart", num_images=2, seed=5, **FAST))
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, reloaded)
    np.testing.assert_array_equal(a, in_memory)  # float32 weights survive the folder exactly
    assert a.std() > 0 and not np.array_equal(a[0], a[1])  # images of one batch get their own noise


def test_different_seed_gives_different_pixels(pipe: TextToImage) -> None:
    a = pixels(pipe("a red heart", seed=0, **FAST))
    b = pixels(pipe("a red heart", seed=1, **FAST))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1


def test_pipeline_is_the_documented_wiring(pipe: TextToImage) -> None:
    """Encode with the negative prompt as uncond, sample from seeded noise, decode: nothing else."""
    result = pipe(["cat", "dog"], num_images=2, seed=3, guidance=3.0, negative_prompt="blurry",
                  sampler="euler_ancestral", rescale=0.5, **FAST)
    prompts = ["cat", "cat", "dog", "dog"]
    with torch.no_grad():
        cond, uncond = pipe.components.conditioner(prompts=prompts), pipe.components.conditioner(prompts=["blurry"] * 4)
    latents = sample_latents(pipe.components, cond, uncond, batch_size=4, seed=3, steps=3,
                             sampler="euler_ancestral", guidance=3.0, rescale=0.5)
    torch.testing.assert_close(result.latents, latents, rtol=0, atol=0)
    expected = images_to_pil(decode_images(pipe.components, latents))
    np.testing.assert_array_equal(pixels(result), np.stack([np.asarray(i) for i in expected]))
    assert [m.prompt for m in result.metadata] == prompts
    assert [m.index for m in result.metadata] == [0, 1, 2, 3]
    assert set(result.timings) == {"encode", "denoise", "decode"}


def test_guidance_and_negative_prompt_change_the_output(pipe: TextToImage) -> None:
    base = pixels(pipe("a red heart", guidance=5.0, **FAST))
    assert not np.array_equal(base, pixels(pipe("a red heart", guidance=2.0, **FAST)))
    assert not np.array_equal(base, pixels(pipe("a red heart", guidance=5.0, negative_prompt="blue", **FAST)))
    # Closed forms of CFG: scale 1 never looks at the unconditional side, and the unconditional
    # input of a text model *is* the empty prompt.
    one = pixels(pipe("a red heart", guidance=1.0, **FAST))
    np.testing.assert_array_equal(one, pixels(pipe("a red heart", guidance=1.0, negative_prompt="blue", **FAST)))
    np.testing.assert_array_equal(base, pixels(pipe("a red heart", guidance=5.0, negative_prompt="", **FAST)))


def test_empty_prompt_is_unconditional(pipe: TextToImage) -> None:
    """The empty prompt is the unconditional input, so guidance has nothing to push along: any
    scale gives the unguided picture; a real prompt moves with the scale."""
    empty = pipe("", guidance=5.0, **FAST)
    assert len(empty) == 1 and empty[0].size == (16, 16)
    torch.testing.assert_close(empty.latents, pipe("", guidance=1.0, **FAST).latents, atol=1e-4, rtol=0)
    worded = pipe("a red heart", guidance=5.0, **FAST).latents
    assert (worded - pipe("a red heart", guidance=1.0, **FAST).latents).abs().max() > 1e-3


@pytest.mark.parametrize("size", [8, 24])
def test_size_is_honoured(pipe: TextToImage, size: int) -> None:
    result = pipe("a red heart", size=size, **FAST)
    assert result[0].size == (size, size)
    assert result.latents.shape == (1, 4, size // 2, size // 2)
    assert result.metadata[0].size == size


def test_size_the_model_cannot_make_names_allowed_sizes(pipe: TextToImage) -> None:
    assert pipe.size_multiple == 4  # f=2 autoencoder x UNet with one downsampling
    for size in (10, 0, -4):
        with pytest.raises(ValueError, match=r"size=.* multiples of 4.*native size is 16"):
            pipe("x", size=size, **FAST)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, r"steps=0 must be an integer >= 1"),
    ({"steps": 1001}, r"steps=1001 must be an integer in \[1, 1000\]"),
    ({"sampler": "plms"}, r"sampler='plms'.*'dpmpp_2m'"),
    ({"guidance": -1.0}, r"guidance=-1.0 must be"),
    ({"seed": -1}, r"seed=-1 must be an integer"),
    ({"num_images": 0}, r"num_images=0 must be"),
    ({"rescale": 2.0}, r"rescale=2.0 must lie in"),
    ({"negative_prompt": ["a", "b"]}, r"negative_prompt has 2 entries for 1 prompts"),
])
def test_bad_arguments_raise_naming_allowed_values(pipe: TextToImage, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pipe("x", **{**FAST, **kwargs})


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_callback_and_progress_once_per_step(pipe: TextToImage, sampler: str, capsys) -> None:
    seen: list[int] = []
    pipe("x", steps=4, sampler=sampler, callback=lambda info: seen.append(info["i"]), progress=True)
    assert seen == [0, 1, 2, 3]
    assert "4/4" in capsys.readouterr().err  # the tqdm bar reached the last step


def test_overlong_prompt_is_truncated_with_a_warning(pipe: TextToImage) -> None:
    long = "one two three four five six seven eight nine ten"
    with pytest.warns(UserWarning, match="max_length=8"):
        cut = pixels(pipe(long, **FAST))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Truncation keeps the first max_length - 2 words and [SEP]: an equally cut prompt matches.
        same = pixels(pipe(long + " eleven twelve", **FAST))
    np.testing.assert_array_equal(cut, same)


def test_metadata_regenerates_the_image(pipe: TextToImage, folder: Path, tmp_path: Path) -> None:
    result = pipe(["café ☕", "dog"], num_images=2, seed=9, guidance=4.0, negative_prompt=["dark", "wet"], **FAST)
    meta = result.metadata[3]
    assert meta.prompt == "dog" and meta.negative_prompt == "wet" and meta.model_hash == model_hash(folder)
    assert meta.ldm_version == latent_diffusion.__version__ and meta.size == 16 and meta.dtype == "float32"
    path = write_png(tmp_path / "img.png", result[3], meta)
    read = read_generation_metadata(path)
    assert read == meta
    again = pipe(**read.call_arguments(), progress=False)
    np.testing.assert_array_equal(np.asarray(again[3]), np.asarray(result[3]))
    from PIL import Image

    with Image.open(path) as image:
        assert image.text["prompt"] == "dog" and image.text["seed"] == "9" and image.text["index"] == "3"
    first = read_generation_metadata(write_png(tmp_path / "first.png", result[0], result.metadata[0]))
    assert first.prompt == "café ☕"  # iTXt keeps any character


def test_reading_metadata_of_a_foreign_png_fails_clearly(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no ldm_parameters chunk"):
        read_generation_metadata(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="not valid JSON"):
        GenerationMetadata.from_json("{not json")


def test_missing_default_model_says_how_to_choose_another(monkeypatch, tmp_path: Path) -> None:
    default = pipeline_base.default_model_folder()
    assert default.parts[-2:] == ("models", pipeline_base.DEFAULT_MODEL_NAME)
    assert (default.parents[1] / "src" / "latent_diffusion").is_dir()  # the source tree's root
    missing = tmp_path / "models" / pipeline_base.DEFAULT_MODEL_NAME
    monkeypatch.setattr(pipeline_base, "default_model_folder", lambda name: missing)
    with pytest.raises(FileNotFoundError, match=r"default model folder .* does not exist.*--model PATH"):
        TextToImage.from_pretrained()


def test_default_model_with_minilm_conditioner(monkeypatch, tmp_path: Path) -> None:
    """The shipped model's kind: MiniLM comes from its package, not from the folder."""
    folder = tiny_model_folder(tmp_path / "models" / pipeline_base.DEFAULT_MODEL_NAME, kind="minilm")
    monkeypatch.setattr(pipeline_base, "default_model_folder", lambda name: folder)
    pipe = TextToImage.from_pretrained()
    a = pixels(pipe("a red heart", steps=2, progress=False))
    b = pixels(pipe("a red heart", steps=2, progress=False))
    np.testing.assert_array_equal(a, b)
    assert pipe.model_hash == model_hash(folder) and pipe.components.conditioner.context_dim == 384


def test_unconditional_model_only_takes_the_empty_prompt() -> None:
    pipe = TextToImage.from_pretrained(tiny_components(kind="none"))
    assert pipe("", **FAST)[0].size == (16, 16)
    with pytest.raises(ValueError, match="unconditional"):
        pipe("a cat", **FAST)


def test_class_model_reads_class_names_as_prompts() -> None:
    pipe = TextToImage.from_pretrained(tiny_components(kind="class", num_classes=2, class_names=("cat", "dog"),
                                                       class_embed_dim=16))
    cat, dog = pixels(pipe("cat", **FAST)), pixels(pipe("dog", **FAST))
    assert not np.array_equal(cat, dog)
    # guidance 1 and the null class "" as the prompt: the unconditional model, whatever the negative
    np.testing.assert_array_equal(pixels(pipe("", guidance=1.0, **FAST)),
                                  pixels(pipe("", guidance=1.0, negative_prompt="dog", **FAST)))
    with pytest.raises(ValueError, match="unknown class name 'bird'"):
        pipe("bird", **FAST)
