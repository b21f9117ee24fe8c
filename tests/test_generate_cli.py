"""``ldm generate``: files, names, metadata, grid, and every bad input as a one-line exit-2 error."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_diffusion import cli
from latent_diffusion.pipelines import TextToImage, read_generation_metadata
from latent_diffusion.pipelines import cli as generate_cli
from test_text_to_image import tiny_model_folder

@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture()
def ldm(monkeypatch, capsys, tmp_path: Path, model: Path):
    """Run ``ldm generate ... --model <tiny>`` in an empty folder; returns (rc, stdout, stderr)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def run(*args: str, model_path: Path | str = model) -> tuple[int, str, str]:
        # Defaults first, so a test's own --steps or --model comes later and wins.
        rc = cli.main(["generate", "--model", str(model_path), "--steps", "3", "--no-progress", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def test_default_name_metadata_and_pixels(ldm, model: Path) -> None:
    rc, out, err = ldm("a red heart", "--seed", "3", "--guidance", "4")
    assert rc == 0, err
    path = Path.cwd() / "ldm-3.png"
    assert files_in(Path.cwd()) == ["ldm-3.png"] and out.strip() == f"wrote {path}"
    meta = read_generation_metadata(path)
    assert (meta.prompt, meta.seed, meta.index, meta.steps, meta.guidance, meta.sampler, meta.size) == \
        ("a red heart", 3, 0, 3, 4.0, "dpmpp_2m", 16)
    # The file holds exactly what the API makes from the arguments in its metadata.
    again = TextToImage.from_pretrained(model, precision=meta.precision)(**meta.call_arguments(), progress=False)
    with Image.open(path) as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(again[0]))
        text = image.text
    assert {"prompt", "negative_prompt", "seed", "index", "sampler", "steps", "guidance", "size",
            "model_hash", "ldm_version", "ldm_parameters"} <= set(text)
    assert text["size"] == "16x16" and text["model_hash"] == meta.model_hash and len(meta.model_hash) == 16


def test_several_images_are_numbered(ldm) -> None:
    rc, out, err = ldm("a cat", "-n", "3", "-o", "out.png", "--negative", "dog", "--size", "8")
    assert rc == 0, err
    assert files_in(Path.cwd()) == ["out-0.png", "out-1.png", "out-2.png"]
    assert len(out.strip().splitlines()) == 3
    for i in range(3):
        meta = read_generation_metadata(f"out-{i}.png")
        assert meta.index == i and meta.negative_prompt == "dog" and meta.num_images == 3
        with Image.open(f"out-{i}.png") as image:
            assert image.size == (8, 8)


def test_output_folder_gets_the_default_name(ldm, tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    rc, _, err = ldm("a cat", "--seed", "11", "-o", str(tmp_path / "pictures"))
    assert rc == 0, err
    assert files_in(tmp_path / "pictures") == ["ldm-11.png"]


def test_grid_tiles_the_batch(ldm, model: Path) -> None:
    rc, _, err = ldm("a cat", "-n", "4", "--grid", "-o", "grid.png", "--seed", "2")
    assert rc == 0, err
    assert files_in(Path.cwd()) == ["grid.png"]
    meta = read_generation_metadata("grid.png")
    assert meta.index is None and meta.num_images == 4
    images = TextToImage.from_pretrained(model, precision=meta.precision)(**meta.call_arguments(), progress=False)
    with Image.open("grid.png") as grid:
        grid = np.asarray(grid)
    # make_grid's layout: 2 tiles per row, 2 px of black padding around and between tiles.
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)
    for i, image in enumerate(images):
        top, left = 2 + (i // 2) * 18, 2 + (i % 2) * 18
        np.testing.assert_array_equal(grid[top:top + 16, left:left + 16], np.asarray(image))
    assert grid[:2].max() == 0 and grid[:, 18:20].max() == 0


def test_long_prompt_warns_once(ldm) -> None:
    long = "one two three four five six seven eight nine ten"
    rc, _, err = ldm(long, "-n", "2", "--negative", "also a very long negative prompt of many words")
    assert rc == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and all(w.startswith("ldm generate: warning:") for w in warnings)
    assert all("max_length=8" in w for w in warnings)  # prompt and negative prompt, each once


def corrupt_index(model: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad-index"
    bad.mkdir()
    for p in model.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "model_index.json").write_text("{ not json")
    return bad


def corrupt_weights(model: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad-weights"
    bad.mkdir()
    for p in model.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    data = (bad / "unet.safetensors").read_bytes()
    (bad / "unet.safetensors").write_bytes(data[: len(data) // 2])  # a download cut short
    return bad


def broken_config(model: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad-config"
    bad.mkdir()
    for p in model.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "unet.json").write_text('{"model_channels": "wide"}')
    return bad


@pytest.mark.parametrize("args, model_fn, match", [
    (["--steps", "0"], None, "steps=0"),
    (["--sampler", "plms"], None, "sampler='plms' is not supported; choose one of"),
    (["--size", "10"], None, "size=10 cannot be made by this model"),
    (["--guidance", "-2"], None, "guidance=-2.0"),
    (["-n", "0"], None, "num_images=0"),
    ([], lambda m, t: t / "no-such-model", "does not exist"),
    ([], corrupt_index, "is corrupt"),
    ([], corrupt_weights, "corrupt or not safetensors"),
    ([], broken_config, "cannot load the model folder"),
    (["-o", "missing/out.png"], None, "output folder .*missing' does not exist; create it"),
    (["-o", "notes.txt/out.png"], None, "does not exist"),
    (["-o", "out.jpg"], None, "must be a .png file"),
    (["--size", "100000"], None, r"need about \d+\.\d GiB .* at most \d+ px a side on this model"),
    (["--size", "2048", "-n", "5000"], None, r"at most \d+ px a side on this model for 5000 images"),
    (["--device", "foo"], None, "unknown device 'foo'; choose cpu, cuda"),
    pytest.param(["--device", "cuda"], None, "has no usable CUDA device",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is here")),
])
def test_bad_input_is_one_line_exit_2_and_no_file(ldm, model: Path, tmp_path: Path, args, model_fn, match) -> None:
    (Path.cwd() / "notes.txt").write_text("a file, not a folder")
    model_path = model if model_fn is None else model_fn(model, tmp_path)
    rc, out, err = ldm("a cat", *args, model_path=model_path)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ldm generate: error:"), err
    assert re.search(match, lines[0]), lines[0]
    assert files_in(Path.cwd()) == ["notes.txt"]  # no image, no temporary file


def test_a_prompt_that_is_not_utf8_is_one_line(ldm) -> None:
    # What Python makes of the shell's `"$(printf 'red \xff heart')"`: a lone surrogate.
    rc, out, err = ldm("red \udcff heart")
    assert rc == 2 and err.strip().splitlines() == [
        "ldm generate: error: prompts[0] is not valid UTF-8 text (an undecodable byte at character 4); "
        "write the prompt in UTF-8"]


def test_a_failed_write_leaves_no_file(ldm, monkeypatch) -> None:
    from latent_diffusion.pipelines import png

    real, calls = png.write_png, []

    def fail_second(path, image, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, image, metadata)

    monkeypatch.setattr(png, "write_png", fail_second)
    rc, _, err = ldm("a cat", "-n", "3", "-o", "out.png")
    assert rc == 2 and len(calls) == 2
    assert err.strip() == "ldm generate: error: could not write the images: [Errno 28] No space left on device; " \
        "free some space or choose another -o PATH"
    assert files_in(Path.cwd()) == []


def test_output_paths_rules(tmp_path: Path) -> None:
    assert generate_cli.output_paths(tmp_path / "a", 0, 1) == [tmp_path / "a.png"]
    assert generate_cli.output_paths(tmp_path / "a.PNG", 0, 2) == [tmp_path / "a-0.PNG", tmp_path / "a-1.PNG"]
    assert generate_cli.output_paths(tmp_path, 42, 1) == [tmp_path / "ldm-42.png"]


def test_precision_flag_is_recorded_and_auto_follows_the_cpu(ldm) -> None:
    from latent_diffusion.hardware import resolve_precision

    assert ldm("a cat", "-o", "auto.png")[0] == 0
    assert read_generation_metadata("auto.png").precision == resolve_precision("auto", "cpu")
    assert ldm("a cat", "--precision", "fp32", "-o", "exact.png")[0] == 0
    with Image.open("exact.png") as image:
        assert image.text["precision"] == "fp32"
