"""Fashion-MNIST: 70,000 grey 28x28 pictures of clothing in 10 classes (MIT licence, Zalando).

Source: Debian package ``dataset-fashion-mnist``, files
``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in the IDX
format (gzip; big-endian header: two zero bytes, a type byte 0x08 = uint8, the number of
dimensions, then one int32 per dimension; 16 header bytes for images, 8 for labels).
``ldm data prepare fashion-mnist`` copies them from the system folder when the package is
installed, and otherwise runs ``apt-get download`` + ``dpkg -x`` (no root needed) into a temporary
folder; the result lives in ``$LDM_DATA_DIR/fashion-mnist``. When that cache is absent but the
system folder is complete, the system folder is read directly.

Split (the dataset's own, fixed): ``train`` = the 60,000 images of the train file,
``validation`` = the 10,000 of the t10k file. ``val_fraction`` does not apply.

Captions: "a photo of a trouser" (full), "trouser" (name), and two more templates.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from latent_diffusion.data import cache
from latent_diffusion.data.common import LabelledGreyDataset
from latent_diffusion.validation import check_choice

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
LICENCE = "MIT (Zalando Research; Debian package dataset-fashion-mnist)"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# Caption nouns: the class names as a person would write them in a sentence.
NOUNS = ("t-shirt", "trouser", "pullover", "dress", "coat",
         "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "validation": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzip or plain) of unsigned bytes into an array of its declared shape."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"IDX file {str(path)!r}: bad magic {raw[:4].hex()}; expected 0000 08 <ndim>")
    if raw[2] != 0x08:
        raise ValueError(f"IDX file {str(path)!r}: element type 0x{raw[2]:02x}; only 0x08 (uint8) is supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {str(path)!r}: header says shape {shape} ({expected} bytes) but "
            f"{len(raw) - header} bytes follow; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_caption_variants(label: int) -> list[str]:
    """Captions of a class: full template first, bare name second."""
    noun = NOUNS[label]
    article = "an" if noun[0] in "aeiou" else "a"
    return [f"a photo of {article} {noun}", noun, f"{article} {noun}",
            f"a black and white photo of {article} {noun}"]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for pair in FILES.values() for name in pair)


def copy_from(source: Path, dest: Path) -> dict[str, Any]:
    """Copy the four IDX files (and the licence) from ``source`` into ``dest``; return a manifest."""
    counts = {}
    for split, (images, labels) in FILES.items():
        for name in (images, labels):
            shutil.copy2(source / name, dest / name)
        counts[split] = int(read_idx(dest / labels).shape[0])
    # Debian keeps the licence in /usr/share/doc/<package>/copyright, beside /usr/share/datasets.
    copyright_file = source.parent.parent / "doc" / PACKAGE / "copyright"
    if copyright_file.is_file():
        shutil.copy2(copyright_file, dest / "copyright")
    return {"dataset": "fashion-mnist", "source": f"Debian {PACKAGE}", "licence": LICENCE,
            "counts": counts}


def prepare_fashion_mnist(force: bool = False) -> Path:
    """Cache the IDX files (system copy if installed, else ``apt-get download``); return the folder."""

    def build(tmp: Path) -> dict[str, Any]:
        if _complete(SYSTEM_DIR):
            return copy_from(SYSTEM_DIR, tmp)
        with cache.scratch_dir() as scratch:
            extracted = cache.apt_download_extract(PACKAGE, scratch)
            source = extracted / SYSTEM_DIR.relative_to("/")
            if not _complete(source):
                raise cache.PreparationError(f"{PACKAGE} did not contain {sorted(FILES)} files in {SYSTEM_DIR}")
            return copy_from(source, tmp)

    folder = cache.dataset_dir("fashion-mnist")
    cache.prepare_folder(folder, build, force=force)
    return folder


def find_folder_or_none(root: str | Path | None = None) -> Path | None:
    """The prepared folder, else (without ``root``) the complete system folder, else None."""
    folder = Path(root) if root is not None else cache.dataset_dir("fashion-mnist")
    if cache.is_prepared(folder):
        return folder
    if root is None and _complete(SYSTEM_DIR):
        return SYSTEM_DIR
    return None


def find_folder(root: str | Path | None = None) -> Path:
    """Like :func:`find_folder_or_none`, but a DatasetNotPreparedError instead of None."""
    found = find_folder_or_none(root)
    if found is not None:
        return found
    folder = Path(root) if root is not None else cache.dataset_dir("fashion-mnist")
    return cache.require_prepared(folder, "fashion-mnist",
                                  hint=f"; or install it system-wide: `apt-get install {PACKAGE}`")


class FashionMNISTDataset(LabelledGreyDataset):
    """One official split of Fashion-MNIST, with class labels and template captions."""

    class_names = CLASS_NAMES
    licence = LICENCE

    def __init__(self, split: str = "train", resolution: int = 28, channels: int = 1,
                 caption_mode: str = "full", root: str | Path | None = None) -> None:
        super().__init__(resolution, channels, caption_mode)
        check_choice("split", split, ("train", "validation", "all"))
        folder = find_folder(root)
        parts = ["train", "validation"] if split == "all" else [split]
        images, labels, self.item_keys = [], [], []
        for part in parts:
            images.append(read_idx(folder / FILES[part][0]))
            labels.append(read_idx(folder / FILES[part][1]))
            if images[-1].ndim != 3 or len(images[-1]) != len(labels[-1]):
                raise ValueError(f"fashion-mnist {part}: images {images[-1].shape} do not match "
                                 f"labels {labels[-1].shape}")
            self.item_keys += [f"fashion-mnist/{part}/{j}" for j in range(len(labels[-1]))]
        self.images = np.concatenate(images)
        self.labels = np.concatenate(labels).astype(np.int64)

    def captions_for_label(self, label: int) -> list[str]:
        return fashion_caption_variants(label)


__all__ = [
    "CLASS_NAMES",
    "FILES",
    "FashionMNISTDataset",
    "copy_from",
    "fashion_caption_variants",
    "find_folder",
    "find_folder_or_none",
    "prepare_fashion_mnist",
    "read_idx",
]
