"""Conversion: SD single files and diffusers folders in, diffusers folders out, bad input refused.

Key maps are checked against diffusers' own LDM converter (written independently of ours), and
every round trip must give back the same tensors. Numerical parity of the converted networks
with diffusers' implementations is in test_diffusers_parity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sd_testing import TINY, make_components, single_file_state, single_thread, text_states  # noqa: F401 (fixture)

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.autoencoder.tiling import decode_latents_tiled, tile_starts, tiled_apply
from latent_diffusion.cli import main
from latent_diffusion.convert import (
    ConversionError,
    components_from_diffusers,
    components_from_single_file,
    convert,
    detect_format,
    save_diffusers,
)
from latent_diffusion.convert.schedulers import diffusion_from_scheduler_config, scheduler_config_for_export
from latent_diffusion.convert.unet_keys import unet_config_to_diffusers, unet_to_diffusers
from latent_diffusion.convert.vae_keys import vae_config_to_diffusers, vae_to_diffusers
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.pipelines import load_components

PROMPTS = ["a red lighthouse at dusk", ""]


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(version: str):
    return make_components(TINY[version], seed=3)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def assert_same_model(ours, theirs) -> None:
    """Same UNet and VAE tensors, same schedule, and text encoders that encode alike."""
    assert_same_state(ours.unet, theirs.unet)
    assert_same_state(ours.autoencoder, theirs.autoencoder)
    assert ours.unet.config == theirs.unet.config and ours.autoencoder.config == theirs.autoencoder.config
    assert ours.diffusion == theirs.diffusion and ours.resolution == theirs.resolution
    # SD 2's penultimate-layer encoder comes back one block shorter, running to its end: equal states.
    torch.testing.assert_close(text_states(ours, PROMPTS), text_states(theirs, PROMPTS), rtol=0, atol=1e-6)


# ---- key maps against diffusers' own converter ---------------------------------------------


def test_unet_and_vae_key_maps_equal_diffusers_ldm_converter(model) -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet, vae = model.unet, model.autoencoder
    ldm = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    theirs = convert_ldm_unet_checkpoint(ldm, unet_config_to_diffusers(unet.config, 8))
    ours = unet_to_diffusers(unet.state_dict(), unet.config)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    theirs = convert_ldm_vae_checkpoint(dict(vae.state_dict()), vae_config_to_diffusers(vae.config, 64))
    ours = vae_to_diffusers(vae.state_dict(), vae.config)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k].reshape(ours[k].shape)) and ours[k].shape == theirs[k].shape
               for k in ours)


# ---- round trips ---------------------------------------------------------------------------------


def test_diffusers_folder_round_trip(model, tmp_path: Path) -> None:
    folder = save_diffusers(model, tmp_path / "diffusers")
    assert detect_format(folder) == "diffusers"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"])
    back = components_from_diffusers(folder)
    assert_same_model(model, back)
    # fp16 export: the same model up to fp16 rounding.
    half = components_from_diffusers(save_diffusers(model, tmp_path / "half", dtype=torch.float16))
    w = model.unet.state_dict()["input_blocks.1.0.in_layers.2.weight"]
    assert torch.equal(half.unet.state_dict()["input_blocks.1.0.in_layers.2.weight"], w.half().float())


def test_a_tokenizer_saved_by_installed_transformers_is_read(model, tmp_path: Path) -> None:
    """transformers 5 saves a CLIP tokenizer as tokenizer.json + tokenizer_config.json only (no
    vocab.json / merges.txt); such a folder, as StableDiffusionPipeline.save_pretrained now writes
    it, converts like any other."""
    import shutil

    import transformers

    folder = save_diffusers(model, tmp_path / "diffusers")
    loaded = transformers.CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    shutil.rmtree(folder / "tokenizer")
    loaded.save_pretrained(str(folder / "tokenizer"))
    assert not (folder / "tokenizer" / "vocab.json").exists() and (folder / "tokenizer" / "tokenizer.json").is_file()
    back = components_from_diffusers(folder)
    assert_same_model(model, back)
    assert back.conditioner.config.clip_pad_token_id == model.conditioner.config.clip_pad_token_id
    broken = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())
    broken["model"] = {"type": "WordPiece", "vocab": {}}
    (folder / "tokenizer" / "tokenizer.json").write_text(json.dumps(broken))
    with pytest.raises(ConversionError, match="holds no BPE vocabulary"):
        components_from_diffusers(folder)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_import(model, version: str, suffix: str, tmp_path: Path) -> None:
    state = single_file_state(model)
    path = tmp_path / f"sd{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:  # Lightning layout, as the original releases: {"state_dict": ..., "global_step": ...}
        torch.save({"state_dict": state, "global_step": 470000}, path)
    assert detect_format(path) == "single_file"
    loaded = components_from_single_file(path, prediction=model.diffusion.prediction, resolution=64)
    assert_same_model(model, loaded)
    if version == "sd2":
        assert loaded.conditioner.config.clip_layers == model.conditioner.config.clip_layers - 1
        assert loaded.conditioner.config.clip_layer == "last"


def test_single_file_text_encoder_matches_diffusers_reading_of_it(model, version: str) -> None:
    """diffusers' own single-file text-encoder conversion (OpenCLIP for SD 2) of the same file."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    state = single_file_state(model)
    c = model.conditioner.config
    reference = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=c.clip_hidden, intermediate_size=c.clip_intermediate,
        num_hidden_layers=c.clip_layers, num_attention_heads=c.clip_heads, max_position_embeddings=c.max_length,
        hidden_act=c.clip_activation)).eval()
    if version == "sd1":
        converted = convert_ldm_clip_checkpoint(state)
    else:  # diffusers only drops block 23 of the real ViT-H; the tiny model keeps all its blocks
        converted = convert_open_clip_checkpoint(reference, state)
    converted = {k.removeprefix("text_model."): v for k, v in converted.items() if "position_ids" not in k}
    reference.load_state_dict(converted, strict=False)
    assert set(converted) >= set(reference.state_dict())
    loaded = components_from_single_file(_save(state), model.diffusion.prediction)
    ids, _ = loaded.conditioner.encoder.tokenizer(PROMPTS)
    with torch.no_grad():
        out = reference(input_ids=ids, output_hidden_states=True)
        expected = out.last_hidden_state if version == "sd1" else reference.final_layer_norm(out.hidden_states[-2])
    torch.testing.assert_close(text_states(loaded, PROMPTS), expected, rtol=0, atol=1e-5)


def _save(state: dict[str, torch.Tensor]) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "model.safetensors"
    save_file(state, str(path))
    return path


def test_scheduler_configs_round_trip() -> None:
    for schedule in ("linear_in_sqrt_beta", "linear", "cosine"):
        for prediction in ("eps", "v", "x0"):
            d = DiffusionConfig(schedule=schedule, prediction=prediction)
            assert diffusion_from_scheduler_config(scheduler_config_for_export(d)) == d
    sd2 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
           "prediction_type": "v_prediction"}
    assert diffusion_from_scheduler_config(sd2) == DiffusionConfig(prediction="v")
    assert diffusion_from_scheduler_config(sd2, prediction="eps").prediction == "eps"


# ---- the command line -----------------------------------------------------------------------------


def test_ldm_convert_both_ways_and_generate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = make_components(TINY["sd1"], seed=4)
    path = tmp_path / "sd.safetensors"
    save_file(single_file_state(model), str(path))
    assert main(["convert", str(path), str(tmp_path / "ours"), "--resolution", "64"]) == 0
    assert "single file" in capsys.readouterr().out
    assert_same_model(model, load_components(tmp_path / "ours"))
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--dtype", "fp16"]) == 0
    assert json.loads((tmp_path / "hf" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0
    out = tmp_path / "img.png"
    assert main(["generate", "a red lighthouse", "--model", str(tmp_path / "again"), "--steps", "2",
                 "--seed", "1", "-o", str(out), "--no-progress"]) == 0
    assert out.is_file()
    # An existing destination is never overwritten.
    assert main(["convert", str(path), str(tmp_path / "ours")]) == 2
    assert "already exists" in capsys.readouterr().err


# ---- bad input -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_state() -> dict[str, torch.Tensor]:
    return single_file_state(make_components(TINY["sd1"], seed=5))


def refused(src: Path, dst: Path, match: str) -> None:
    """``convert`` raises a one-line ConversionError naming the file, and leaves nothing at ``dst``."""
    with pytest.raises(ConversionError, match=match) as info:
        convert(src, dst)
    assert str(src) in str(info.value) and "\n" not in str(info.value)
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]


def test_unknown_layout_missing_keys_and_wrong_shapes_are_named(sd1_state, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    save_file({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    refused(tmp_path / "x.safetensors", dst, r"unknown checkpoint layout.*\['bar.bias', 'foo.weight'\]")
    lone_unet = {k.removeprefix("model.diffusion_model."): v for k, v in sd1_state.items()}
    save_file(lone_unet, str(tmp_path / "u.safetensors"))
    refused(tmp_path / "u.safetensors", dst, "unknown checkpoint layout")

    key = "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    broken = {k: v for k, v in sd1_state.items() if k != key}
    save_file(broken, str(tmp_path / "missing.safetensors"))
    refused(tmp_path / "missing.safetensors", dst, rf"missing keys \['{key}'\]")

    wrong = dict(sd1_state)
    wrong["first_stage_model.decoder.mid.attn_1.q.weight"] = torch.zeros(128, 128, 3, 3)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    refused(tmp_path / "wrong.safetensors", dst,
            r"wrong shapes \['first_stage_model.decoder.mid.attn_1.q.weight: file \(128, 128, 3, 3\) vs "
            r"expected \(128, 128, 1, 1\)'\]")

    extra = dict(sd1_state)
    extra["model.diffusion_model.input_blocks.1.1.extra.weight"] = torch.zeros(1)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    refused(tmp_path / "extra.safetensors", dst, r"unexpected keys \['model.diffusion_model.input_blocks.1.1.extra")

    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="trunc.safetensors.*corrupt"):
        convert(tmp_path / "trunc.safetensors", dst)
    assert not dst.exists()


class Payload:
    """A pickled object that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_that_need_code_are_refused_never_run(sd1_state, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": sd1_state, "callback": Payload()}, path)
    refused(path, tmp_path / "out", "refusing to unpickle.*weights_only")
    assert "this must never run" not in capsys.readouterr().out
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    refused(tmp_path / "junk.ckpt", tmp_path / "out", "not a readable PyTorch checkpoint")
    import pickle

    with open(tmp_path / "raw.ckpt", "wb") as handle:  # a plain pickle: the reason used to be empty
        pickle.dump({"a": 1}, handle, protocol=4)
    refused(tmp_path / "raw.ckpt", tmp_path / "out", r"not a readable PyTorch checkpoint: \S.* plain pickle")


def test_bad_diffusers_folders_are_refused(tmp_path: Path) -> None:
    model = make_components(TINY["sd1"], seed=6)
    folder = save_diffusers(model, tmp_path / "hf")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    refused(folder, tmp_path / "out", r"unet.*has no weights")
    folder = save_diffusers(model, tmp_path / "hf2")
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [32, 64, 128, 256]  # the file's shapes no longer fit
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    refused(folder, tmp_path / "out", r"wrong shapes \['down_blocks.3")
    cfg["addition_embed_type"] = "text_time"  # SDXL
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    refused(folder, tmp_path / "out", "addition_embed_type='text_time' is not supported")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "out")


def test_export_refuses_models_diffusers_cannot_run(tmp_path: Path) -> None:
    model = make_components(TINY["sd1"], seed=7)
    from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
    from latent_diffusion.pipelines import DiffusionComponents

    other = build_conditioner(ConditionerConfig(kind="transformer", transformer_width=64, max_length=8))
    foreign = DiffusionComponents(model.autoencoder, model.unet, other, model.diffusion, 64)
    with pytest.raises(ConversionError, match="needs a CLIP text encoder.*kind='transformer'"):
        save_diffusers(foreign, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---- VAE tiling ----------------------------------------------------------------------------------


def test_tiles_cover_the_image_with_the_requested_overlap() -> None:
    assert tile_starts(64, 64, 16) == [0] and tile_starts(40, 64, 16) == [0]
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    for size, tile, overlap in [(100, 32, 8), (65, 16, 4), (128, 64, 16)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_tiled_blending_is_seamless_for_a_local_decoder() -> None:
    # For a decoder without any receptive field beyond the pixel, blended tiles must reproduce the
    # untiled output exactly: the weights sum to one everywhere.
    z = torch.randn(2, 4, 37, 50, generator=torch.Generator().manual_seed(0))

    def decode(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, scale_factor=8, mode="nearest") * 2 + 1

    torch.testing.assert_close(tiled_apply(decode, z, 16, 4, 8.0), decode(z), rtol=0, atol=1e-6)
    encode = lambda t: torch.nn.functional.avg_pool2d(t, 8)  # noqa: E731
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tiled_apply(encode, x, 64, 16, 1 / 8), encode(x), rtol=0, atol=1e-6)


def test_tiled_vae_decode() -> None:
    vae = Autoencoder(AutoencoderConfig(base_channels=32, channel_mult=(1, 2), num_res_blocks=1)).eval()
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = vae.decode_latents(z)
        assert torch.equal(decode_latents_tiled(vae, z, tile=32), full)  # one tile: the plain decode
        tiled = decode_latents_tiled(vae, z, tile=12, overlap=4)
        corner = vae.decode_latents(z[..., :12, :12])
    assert tiled.shape == full.shape and tiled.isfinite().all()
    # Tiles start at latents 0, 8 and 12; pixels 0..15 (f=2) belong to the first tile alone, and
    # its blend weight only falls over its last 4 latents (8 pixels).
    torch.testing.assert_close(tiled[..., :16, :16], corner[..., :16, :16], rtol=0, atol=1e-6)
