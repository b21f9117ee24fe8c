"""Any folder of images, with captions and optional labels, like Hugging Face's ``imagefolder``.

Images: every file under the folder (recursively, hidden files and folders excepted) that is not a
caption file (``*.txt``) or a ``metadata.jsonl``. Each is checked with Pillow when the dataset is
built; files that cannot be read as images (corrupt, truncated headers, or not images at all) are
skipped and reported together in ONE warning, so a stray file never stops a run. A picture that
passes the check but fails to decode later is replaced by the next readable item (one warning).

Captions, first found wins:

1. ``metadata.jsonl`` (one JSON object per line, in the folder or any subfolder):
   ``{"file_name": "cats/1.png", "text": "a cat", "label": "cat"}``, ``file_name`` relative to the
   metadata file's folder (``caption`` is accepted for ``text``);
2. a ``.txt`` beside the image with the same stem (``1.png`` -> ``1.txt``);
3. otherwise the empty caption ``""`` (an unconditional example).

Labels (``labels=``): ``metadata`` = the ``label`` field; ``folders`` = the first subfolder under
the root (``cats/1.png`` -> ``cats``); ``none``; ``auto`` = ``metadata`` when any record has a
label, else ``folders`` when images sit in at least two subfolders, else ``none``. Class names
are the sorted distinct labels (numerically when all are integers); an image without one is -1.

Split: validation holds the images whose relative path (POSIX form) has
``stable_fraction("imagefolder:" + path)`` below ``val_fraction`` (default 0.05).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from latent_diffusion.data.common import (ImageCaptionDataset, check_index, check_split_args,
                                          in_split, relative_posix)
from latent_diffusion.validation import check_choice

METADATA_NAME = "metadata.jsonl"
DEFAULT_VAL_FRACTION = 0.05
LABEL_SOURCES = ("auto", "folders", "metadata", "none")
# Errors Pillow raises for unreadable files (SyntaxError and ValueError come from broken headers).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class FolderItem:
    """One image of the folder with its caption and raw label (None when it has none)."""

    path: Path
    relative: str
    caption: str
    label: str | None


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_metadata(root: Path) -> dict[str, dict[str, Any]]:
    """All ``metadata.jsonl`` records under ``root``, keyed by the image's path relative to root."""
    records: dict[str, dict[str, Any]] = {}
    for meta in sorted(root.rglob(METADATA_NAME)):
        if _is_hidden(meta, root):
            continue
        for number, line in enumerate(read_utf8(meta).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(meta)!r} line {number} is not valid JSON: {err}") from err
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise ValueError(f"{str(meta)!r} line {number}: each record needs a 'file_name' string")
            records[relative_posix(meta.parent / record["file_name"], root)] = record
    return records


def scan_images(root: Path) -> tuple[list[Path], list[str]]:
    """Readable images under ``root`` and the relative paths of files skipped as unreadable."""
    images, skipped = [], []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or _is_hidden(path, root):
            continue
        if path.suffix.lower() == ".txt" or path.name == METADATA_NAME:
            continue
        try:
            with Image.open(path) as image:
                image.verify()
            images.append(path)
        except IMAGE_ERRORS:
            skipped.append(relative_posix(path, root))
    return images, skipped


def _caption(path: Path, record: dict[str, Any] | None) -> str:
    if record is not None:
        text = record.get("text", record.get("caption"))
        if text is not None:
            return str(text).strip()
    beside = path.with_suffix(".txt")
    return read_utf8(beside).strip() if beside.is_file() else ""


def read_utf8(path: Path) -> str:
    """A caption or metadata file's text; a file that is not UTF-8 is a ValueError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                         f"{err.start}); save it as UTF-8") from None


def _folder_label(relative: str) -> str | None:
    parts = relative.split("/")
    return parts[0] if len(parts) > 1 else None


def resolve_label_source(labels: str, items: list[tuple[str, dict[str, Any] | None]]) -> str:
    """Turn ``auto`` into ``metadata``, ``folders`` or ``none`` (see the module docstring)."""
    check_choice("labels", labels, LABEL_SOURCES)
    if labels != "auto":
        return labels
    if any(record is not None and "label" in record for _, record in items):
        return "metadata"
    folders = {_folder_label(rel) for rel, _ in items} - {None}
    return "folders" if len(folders) >= 2 else "none"


def _sort_names(names: set[str]) -> tuple[str, ...]:
    if all(name.lstrip("-").isdigit() for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


class ImageFolderDataset(ImageCaptionDataset):
    """Images of a folder with captions from ``metadata.jsonl`` or ``.txt`` files, split by path hash."""

    licence = "as given by the folder's owner"

    def __init__(self, path: str | Path, split: str = "train", resolution: int = 64, channels: int = 3,
                 val_fraction: float = DEFAULT_VAL_FRACTION, caption_mode: str = "full",
                 labels: str = "auto") -> None:
        super().__init__(resolution, channels, caption_mode)
        check_split_args(split, val_fraction)
        root = Path(path).expanduser()
        if not root.is_dir():
            raise ValueError(f"imagefolder path={str(root)!r} is not a folder")
        self.root = root
        metadata = read_metadata(root)
        paths, skipped = scan_images(root)
        if skipped:
            shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            warnings.warn(f"imagefolder {str(root)!r}: skipped {len(skipped)} file(s) that are not "
                          f"readable images: {shown}", stacklevel=2)
        self.skipped = skipped
        if not paths:
            raise ValueError(f"imagefolder path={str(root)!r} holds no readable images")
        pairs = [(relative_posix(p, root), metadata.get(relative_posix(p, root))) for p in paths]
        self.label_source = resolve_label_source(labels, pairs)
        self.items = [self._item(p, rel, record) for p, (rel, record) in zip(paths, pairs)
                      if in_split(f"imagefolder:{rel}", split, val_fraction)]
        # Class names come from every image, not one split, so label indices agree across splits.
        names = {self._raw_label(rel, record) for rel, record in pairs} - {None}
        self.class_names = _sort_names(names) if self.label_source != "none" else None
        self._late_failures = 0

    def _raw_label(self, relative: str, record: dict[str, Any] | None) -> str | None:
        if self.label_source == "metadata":
            value = None if record is None else record.get("label")
            return None if value is None else str(value)
        if self.label_source == "folders":
            return _folder_label(relative)
        return None

    def _item(self, path: Path, relative: str, record: dict[str, Any] | None) -> FolderItem:
        return FolderItem(path, relative, _caption(path, record), self._raw_label(relative, record))

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.items[index].path) as image:
            image.load()
            return image

    def caption_variants(self, index: int) -> list[str]:
        caption = self.items[index].caption
        return [caption] if caption else []

    def label(self, index: int) -> int:
        raw = self.items[index].label
        return -1 if raw is None or self.class_names is None else self.class_names.index(raw)

    def key(self, index: int) -> str:
        return f"imagefolder/{self.items[index].relative}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        # A file that passed verify() can still fail to decode (e.g. a truncated JPEG body):
        # substitute the next readable item rather than stopping a training run.
        index = check_index(index, len(self))
        for offset in range(len(self)):
            current = (index + offset) % len(self)
            try:
                return super().__getitem__(current)
            except IMAGE_ERRORS as err:
                self._late_failures += 1
                if self._late_failures == 1:
                    warnings.warn(f"imagefolder {str(self.root)!r}: cannot decode "
                                  f"{self.items[current].relative}: {err}; "
                                  f"using the next image (further failures are not reported)",
                                  stacklevel=2)
        raise ValueError(f"imagefolder {str(self.root)!r}: no image in the split can be decoded")


__all__ = [
    "LABEL_SOURCES",
    "METADATA_NAME",
    "FolderItem",
    "ImageFolderDataset",
    "read_metadata",
    "resolve_label_source",
    "scan_images",
]
