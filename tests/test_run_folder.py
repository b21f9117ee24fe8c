"""A fresh run never writes into a folder that holds a run (issue #20, item 3), checked before any write."""

import json
from pathlib import Path

import pytest
import yaml

from latent_diffusion.cli import main
from latent_diffusion.training.autoencoder import AutoencoderTrainer
from latent_diffusion.training.run_folder import RunFolderInUseError, check_run_folder
from tests.test_train_autoencoder import images, make_config  # noqa: F401  (fixture)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(images: Path, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    """A finished 4-step run and its config file."""
    config = make_config(images, tmp_path / "run", steps=4)
    AutoencoderTrainer(config).train()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    return tmp_path / "run", path


def test_fresh_run_in_a_finished_run_folder_is_refused_and_changes_nothing(finished, capsys) -> None:
    run_dir, config = finished
    before = snapshot(run_dir)
    code = main(["train", "autoencoder", "--config", str(config), "run.max_steps=2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_run(finished) -> None:
    run_dir, config = finished
    assert main(["train", "autoencoder", "--config", str(config), "--overwrite", "run.max_steps=2"]) == 0
    # The old run's step-4 checkpoint and its metrics are gone, not mixed with the new run's.
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == ["step-000002"]
    assert max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_still_continues_and_removes_what_a_killed_export_left(finished) -> None:
    run_dir, config = finished
    (run_dir / ".final.k1ll3d.tmp").mkdir()  # a kill during the final export leaves this
    (run_dir / "notes.md").write_text("mine")
    assert main(["train", "autoencoder", "--config", str(config), "--resume", "run.max_steps=6"]) == 0
    assert not (run_dir / ".final.k1ll3d.tmp").exists() and (run_dir / "notes.md").read_text() == "mine"


def test_folder_with_foreign_files_is_never_emptied(tmp_path: Path) -> None:
    (tmp_path / "holiday.jpg").write_bytes(b"mine")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RunFolderInUseError, match="not a training run's .*holiday.jpg"):
        check_run_folder(tmp_path, resume=False, overwrite=True)
    assert (tmp_path / "holiday.jpg").read_bytes() == b"mine"


def test_empty_or_missing_folder_is_fine_and_contradictions_are_named(tmp_path: Path) -> None:
    assert check_run_folder(tmp_path / "new", resume=False, overwrite=False) == []
    assert check_run_folder(tmp_path, resume=False, overwrite=False) == []
    with pytest.raises(RunFolderInUseError, match="give one of them"):
        check_run_folder(tmp_path, resume=True, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderInUseError, match="is a file"):
        check_run_folder(tmp_path / "file", resume=False, overwrite=False)
