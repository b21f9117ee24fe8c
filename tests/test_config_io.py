"""Typed configs round-trip strictly; atomic writes never leave a corrupt file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from latent_diffusion.config import Config
from latent_diffusion.io import (
    atomic_directory,
    atomic_write,
    load_module,
    load_tensors,
    save_module,
    save_tensors,
)


@dataclass
class Inner(Config):
    width: int = 4
    ratio: float = 0.5


@dataclass
class Outer(Config):
    name: str
    kind: Literal["a", "b"] = "a"
    mult: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    optional: int | None = None


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = Outer(name="x", kind="b", mult=(1, 2, 4), inner=Inner(width=8, ratio=1.0), optional=3)
    path = tmp_path / f"cfg{suffix}"
    cfg.save(path)
    assert Outer.load(path) == cfg


def test_config_rejects_unknown_missing_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="unknown key.*'widht'"):
        Inner.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="missing required key.*name"):
        Outer.from_dict({})
    with pytest.raises(ValueError, match=r"Outer.kind: 'c' is not one of \['a', 'b'\]"):
        Outer.from_dict({"name": "x", "kind": "c"})
    with pytest.raises(ValueError, match="expected an integer"):
        Outer.from_dict({"name": "x", "inner": {"width": 2.5}})
    with pytest.raises(ValueError, match="expected an integer"):
        Inner.from_dict({"width": True})
    # An int where a float is declared is fine (YAML writes 1.0 as 1 sometimes).
    assert Inner.from_dict({"ratio": 1}).ratio == 1.0


def test_config_overrides() -> None:
    cfg = Outer(name="x")
    new = cfg.with_overrides(["inner.width=16", "mult=[4, 8]", "optional=null"])
    assert new.inner.width == 16 and new.mult == (4, 8) and new.optional is None
    with pytest.raises(ValueError, match="unknown key 'inner.depth'"):
        cfg.with_overrides(["inner.depth=2"])
    with pytest.raises(ValueError, match="dotted.key=value"):
        cfg.with_overrides(["inner.width"])


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_directory_replaces_only_when_complete(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    with atomic_directory(folder) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed")
    assert (folder / "a.txt").read_text() == "1"
    with atomic_directory(folder) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in folder.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_tensors_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.arange(6.0).view(2, 3).t()})
    assert torch.equal(load_tensors(path)["a"], torch.arange(6.0).view(2, 3).t())
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt or not safetensors"):
        load_tensors(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")


@dataclass
class LinearConfig(Config):
    features: int = 3


class TinyLinear(torch.nn.Linear):
    def __init__(self, config: LinearConfig) -> None:
        super().__init__(config.features, config.features)


def test_module_round_trip_and_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLinear(LinearConfig(3))
    save_module(model, LinearConfig(3), tmp_path, "lin")
    loaded = load_module(TinyLinear, LinearConfig, tmp_path, "lin")
    x = torch.randn(2, 3)
    assert torch.equal(model(x), loaded(x))
    LinearConfig(4).save(tmp_path / "lin.json")
    with pytest.raises(ValueError, match=r"wrong shapes \['weight: file \(3, 3\) vs model \(4, 4\)'"):
        load_module(TinyLinear, LinearConfig, tmp_path, "lin")
