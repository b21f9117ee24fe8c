"""Which format a path holds: our model folder, a diffusers folder, or an SD single file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from latent_diffusion.convert.diffusers_folder import INDEX_FILE, is_diffusers_folder
from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.convert.single_file import SUFFIXES

Format = Literal["ours", "diffusers", "single_file"]


def detect_format(path: str | Path) -> Format:
    """``"ours"`` (a folder written by this project), ``"diffusers"`` or ``"single_file"``."""
    path = Path(path)
    if path.is_file():
        if path.suffix in SUFFIXES:
            return "single_file"
        raise ConversionError(f"{str(path)!r}: unknown file type {path.suffix!r}; expected an SD checkpoint "
                              f"({', '.join(SUFFIXES)}) or a model folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    if is_diffusers_folder(path):
        return "diffusers"
    if (path / INDEX_FILE).is_file():
        from latent_diffusion.model.folder import read_index

        read_index(path)  # raises with a clear message unless it is one of ours
        return "ours"
    raise ConversionError(f"{str(path)!r} is a folder without {INDEX_FILE}: neither a diffusers folder nor "
                          "a model folder of this project")


__all__ = ["Format", "detect_format"]
