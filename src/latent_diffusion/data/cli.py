"""``ldm data``: prepare, list, describe and preview the datasets.

* ``ldm data list``: every dataset, whether it is prepared, and where it lives;
* ``ldm data prepare NAME [--force] [--styles ...]``: fetch and cache (idempotent), then print counts
  per split (``--styles``: emoji-styles only, e.g. to opt in to OpenMoji);
* ``ldm data info NAME [--path DIR]``: counts, class names, example captions, source and licence;
* ``ldm data preview NAME -o grid.png``: a grid of images, captions printed row by row.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from latent_diffusion import data
from latent_diffusion.data import cache
from latent_diffusion.data.cache import PreparationError
from latent_diffusion.data.emoji_styles import styles as emoji_styles_ids
from latent_diffusion.data.emoji_styles.prepare import dataset_dir as emoji_styles_dir
from latent_diffusion.data.emoji_styles.prepare import prepare_emoji_styles
from latent_diffusion.data.common import ImageCaptionDataset
from latent_diffusion.io import atomic_write, check_writable_folder

MAX_PREVIEW_IMAGES = 1024
MAX_PREVIEW_SIDE = 1024


def register(subparsers: Any) -> None:
    """Add ``data`` and its sub-commands to the ``ldm`` parser."""
    parser = subparsers.add_parser("data", help="prepare and inspect datasets",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    listing = commands.add_parser("list", help="datasets and whether they are prepared")
    listing.set_defaults(func=run_list)

    prepare = commands.add_parser("prepare", help="fetch a dataset into the cache")
    prepare.add_argument("name", choices=[n for n, s in data.DATASETS.items() if s.prepare])
    prepare.add_argument("--force", action="store_true", help="prepare again even if cached")
    prepare.add_argument("--styles", nargs="+", default=None, metavar="STYLE",
                         help="emoji-styles: the styles to prepare (default its six; add openmoji, CC-BY-SA 4.0, "
                              "to opt in)")
    prepare.set_defaults(func=run_prepare)

    info = commands.add_parser("info", help="counts, example captions and licence of a dataset")
    _dataset_arguments(info)
    info.add_argument("--examples", type=int, default=5, help="example captions to print")
    info.set_defaults(func=run_info)

    preview = commands.add_parser("preview", help="save a grid of images and print their captions")
    _dataset_arguments(preview)
    preview.add_argument("-o", "--output", required=True, help="PNG file to write")
    preview.add_argument("-n", "--count", type=int, default=16, help="number of images")
    preview.add_argument("--split", default="validation", choices=data.EMOJI_STYLES_SPLITS,
                         help="composition: emoji-styles only (its held-out concept/style pairs)")
    preview.add_argument("--resolution", type=int, default=64)
    preview.set_defaults(func=run_preview)


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=data.DATASET_NAMES)
    parser.add_argument("--path", default=None, help="imagefolder: the folder; others: a prepared folder")


def _config(args: argparse.Namespace, **extra: Any) -> data.DataConfig:
    return data.DataConfig.from_dict({"name": args.name, "path": args.path, **extra})


def split_counts(config: data.DataConfig) -> dict[str, int]:
    """Number of items in the train and validation splits (emoji-styles: and composition)."""
    splits = ("train", "validation") + (("composition",) if config.name == "emoji-styles" else ())
    return {split: len(data.dataset_from_config(config, split)) for split in splits}


def concept_counts(config: data.DataConfig) -> dict[str, int]:
    """emoji-styles: number of distinct concepts in each split."""
    return {split: len({r.concept for r in data.dataset_from_config(config, split).records})
            for split in data.EMOJI_STYLES_SPLITS if split != "all"}


def run_list(args: argparse.Namespace) -> int:
    """Print one line per dataset: name, prepared or not, folder, description."""
    print(f"cache: {data.data_root()}")
    for name, spec in data.DATASETS.items():
        if spec.prepare is None:
            state, where = "no preparation needed", "--path DIR"
        else:
            state = "prepared" if data.is_dataset_prepared(name) else "not prepared"
            where = ", ".join(str(f) for f in spec.folders())
        print(f"{name:14s} {state:22s} {where}\n{'':14s} {spec.description}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    """Fetch and cache one dataset, then print its counts per split and the time taken."""
    spec = data.DATASETS[args.name]
    start = time.perf_counter()
    try:
        if args.styles is not None:
            prepare_styles(args.name, tuple(args.styles), args.force)
        else:
            spec.prepare(args.force)
    except PreparationError as err:
        print(f"ldm data prepare: error: {err}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    config = data.DataConfig(name=args.name, styles=tuple(args.styles) if args.styles else None)
    counts = split_counts(config)
    print(f"{args.name}: prepared in {seconds:.1f} s under {data.data_root()}")
    print("  " + ", ".join(f"{split}: {count}" for split, count in counts.items()))
    if args.name in ("emoji", "emoji-styles"):
        for style in config.styles:
            per_style = split_counts(config.replace(styles=(style,)))
            print(f"  {style}: " + ", ".join(f"{s}: {c}" for s, c in per_style.items()))
    return 0


def prepare_styles(name: str, styles: tuple[str, ...], force: bool) -> None:
    """``prepare --styles``: emoji-styles only; a folder prepared with other styles needs ``--force``."""
    if name != "emoji-styles":
        raise ValueError(f"--styles chooses the styles of emoji-styles; {name!r} is prepared whole (omit --styles)")
    styles = emoji_styles_ids.check_styles(styles)
    folder = emoji_styles_dir()
    if cache.is_prepared(folder) and not force:
        prepared = sorted(cache.read_manifest(folder).get("styles", {}))
        if prepared != sorted(styles):
            raise ValueError(f"{str(folder)!r} is prepared with styles {prepared}; add --force to prepare "
                             f"{list(styles)} instead")
    prepare_emoji_styles(force=force, styles=styles)


def run_info(args: argparse.Namespace) -> int:
    """Print counts per split, class names, example captions, source and licence."""
    spec = data.DATASETS[args.name]
    config = _config(args)
    validation = data.dataset_from_config(config, "validation")
    counts = split_counts(config)
    print(f"{args.name}: {spec.description}")
    print(f"  source:  {spec.source}")
    print(f"  licence: {validation.licence or spec.licence}")
    print("  counts:  " + ", ".join(f"{split}: {count}" for split, count in counts.items()))
    if args.name == "emoji-styles":
        print("  concepts: " + ", ".join(f"{s}: {c}" for s, c in concept_counts(config).items()))
    if validation.class_names:
        print(f"  classes: {', '.join(validation.class_names)}")
    print("  example captions (validation):")
    for index in spread(len(validation), args.examples):
        print(f"    {validation.caption(index)!r}")
        if hasattr(validation, "compose_caption"):  # seeded by the index: the same on every run
            print(f"      composed: {validation.compose_caption(index, torch.Generator().manual_seed(index))!r}")
    return 0


def spread(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)`` (all of them if fewer)."""
    if count <= 0 or length == 0:
        return []
    return sorted(set(np.linspace(0, length - 1, min(count, length)).round().astype(int).tolist()))


def image_grid(dataset: ImageCaptionDataset, indices: list[int]) -> Image.Image:
    """Tile the images of ``indices`` into a near-square RGB grid."""
    columns = max(1, math.ceil(math.sqrt(len(indices))))
    rows = max(1, math.ceil(len(indices) / columns))
    side = dataset.resolution
    grid = Image.new("RGB", (columns * side, rows * side), "white")
    for cell, index in enumerate(indices):
        image = dataset[index]["image"]
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        tile = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
        grid.paste(tile, ((cell % columns) * side, (cell // columns) * side))
    return grid


def run_preview(args: argparse.Namespace) -> int:
    """Save a grid of ``--count`` images of a split and print each caption with its cell."""
    if not 0 < args.count <= MAX_PREVIEW_IMAGES:
        raise ValueError(f"--count={args.count} must be between 1 and {MAX_PREVIEW_IMAGES}")
    if not 0 < args.resolution <= MAX_PREVIEW_SIDE:
        raise ValueError(f"--resolution={args.resolution} must be between 1 and {MAX_PREVIEW_SIDE} px "
                         "(a preview is for looking at the data)")
    output = Path(args.output)
    formats = Image.registered_extensions()
    image_format = formats.get(output.suffix.lower())
    if image_format not in ("PNG", "JPEG", "WEBP"):
        raise ValueError(f"--output {str(output)!r}: write a .png, .jpg or .webp file")
    check_writable_folder(output.parent, "-o FILE")
    dataset = data.dataset_from_config(_config(args, resolution=args.resolution), args.split)
    indices = spread(len(dataset), args.count)
    if not indices:
        raise ValueError(f"the {args.split} split of {args.name} is empty")
    grid = image_grid(dataset, indices)
    atomic_write(output, lambda tmp: grid.save(tmp, format=image_format))
    columns = max(1, math.ceil(math.sqrt(len(indices))))
    for cell, index in enumerate(indices):
        style = dataset.extra(index).get("style")  # the art style, where a dataset has several
        print(f"[{cell // columns},{cell % columns}] {dataset.caption(index)}" + (f"  ({style})" if style else ""))
    print(f"wrote {output} ({len(indices)} images)")
    return 0


__all__ = ["image_grid", "register", "run_info", "run_list", "run_prepare", "run_preview",
           "split_counts", "spread"]
