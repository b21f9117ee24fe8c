"""scripts/ship_model.py: a run's folder becomes an fp16 shipped folder that computes what it did."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from script_loading import load_script
from test_text_to_image import tiny_model_folder

from latent_diffusion.io import save_module
from latent_diffusion.model.folder import read_index
from latent_diffusion.pipelines import load_components

SHIP = load_script("ship_model")


def ship(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """Run the script in this process (a fresh interpreter would spend most of the test importing torch)."""
    monkeypatch.setattr(sys, "argv", ["ship_model.py", *args])
    try:
        SHIP.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_shipped_copy_is_fp16_with_the_training_record(tmp_path: Path, capsys, monkeypatch) -> None:
    src = tiny_model_folder(tmp_path / "run" / "final")
    index = json.loads((src / "model_index.json").read_text())
    index["training_steps"] = 500  # what the run itself counted
    (src / "model_index.json").write_text(json.dumps(index))
    dst = tmp_path / "models" / "tiny"
    training = {"diffusion": {"config": "c.yaml", "steps": 500, "wall_minutes": 1.5}}
    code, err = ship(capsys, monkeypatch, str(src), str(dst), "--training", json.dumps(training),
                     "--data", "some emoji", "--training-steps", "1500")
    assert code == 0, err
    shipped = read_index(dst)
    assert shipped["training"] == training and shipped["data"] == "some emoji"
    assert shipped["training_steps"] == 1500
    with safe_open(str(dst / "unet.safetensors"), "pt") as weights:
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"F16"}
    # Loaded back (as fp32), every weight is the source's rounded to fp16: nothing else changed.
    before, after = load_components(src).unet.state_dict(), load_components(dst).unet.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value.half().float(), rtol=0, atol=0)


def test_an_existing_destination_is_left_alone(tmp_path: Path, capsys, monkeypatch) -> None:
    src = tiny_model_folder(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    code, err = ship(capsys, monkeypatch, str(src), str(dst))
    assert code == 2 and "exists" in err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_bad_source_and_bad_step_count_fail_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    code, err = ship(capsys, monkeypatch, str(tmp_path / "nowhere"), str(tmp_path / "dst"))
    assert code == 2 and "cannot load" in err
    src = tiny_model_folder(tmp_path / "src")
    code, err = ship(capsys, monkeypatch, str(src), str(tmp_path / "dst"), "--training-steps", "0")
    assert code == 2 and "--training-steps 0 must be >= 1" in err
    assert not (tmp_path / "dst").exists()


def test_a_decoder_fine_tune_ships_only_if_it_keeps_the_latents(tmp_path: Path, capsys, monkeypatch) -> None:
    src = tiny_model_folder(tmp_path / "src")
    autoencoder = load_components(src).autoencoder
    with torch.no_grad():
        autoencoder.decoder.conv_out.bias.add_(0.25)  # a "fine-tuned" decoder
    save_module(autoencoder, autoencoder.config, tmp_path / "decoder", "autoencoder")
    code, err = ship(capsys, monkeypatch, str(src), str(tmp_path / "dst"), "--autoencoder", str(tmp_path / "decoder"))
    assert code == 0, err
    shipped = load_components(tmp_path / "dst").autoencoder.decoder.conv_out.bias
    torch.testing.assert_close(shipped, autoencoder.decoder.conv_out.bias.half().float(), rtol=0, atol=0)

    with torch.no_grad():
        autoencoder.encoder.conv_in.weight.mul_(2.0)  # other latents: the UNet would not fit
    save_module(autoencoder, autoencoder.config, tmp_path / "encoder", "autoencoder")
    code, err = ship(capsys, monkeypatch, str(src), str(tmp_path / "dst2"), "--autoencoder", str(tmp_path / "encoder"))
    assert code == 2 and "its encoder differs from the model's (encoder.conv_in.weight" in err
    assert not (tmp_path / "dst2").exists()


def test_an_autoencoder_folder_ships_as_fp16_stage_one(tmp_path: Path, capsys, monkeypatch) -> None:
    from latent_diffusion.autoencoder import load_autoencoder

    components = load_components(tiny_model_folder(tmp_path / "model"))
    src = tmp_path / "ae-run" / "final"
    save_module(components.autoencoder, components.autoencoder.config, src, "autoencoder")
    code, err = ship(capsys, monkeypatch, str(src), str(tmp_path / "models" / "ae"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "models" / "ae").iterdir()) == ["autoencoder.json",
                                                                           "autoencoder.safetensors"]
    with safe_open(str(tmp_path / "models" / "ae" / "autoencoder.safetensors"), "pt") as weights:
        assert {str(weights.get_slice(k).get_dtype()) for k in weights.keys()} == {"F16"}
    shipped = load_autoencoder(tmp_path / "models" / "ae")
    assert shipped.config == components.autoencoder.config  # the scale factor travels with it
    for key, value in components.autoencoder.state_dict().items():
        torch.testing.assert_close(shipped.state_dict()[key], value.half().float(), rtol=0, atol=0)
