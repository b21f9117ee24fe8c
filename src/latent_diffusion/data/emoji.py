"""Emoji: the Google (Noto) and Twitter (Twemoji) sets, 64x64 RGBA, with captions from their names.

Source: npm ``emoji-datasource-google@16.0.0`` and ``emoji-datasource-twitter@16.0.0``.
``package/emoji.json`` lists 1,911 emoji with ``name`` ("MOUSE FACE"), ``short_names``,
``category``, ``subcategory``, ``image`` and ``skin_variations`` (each with its own ``image``);
``has_img_<style>`` says which style has a picture (in 16.0.0 both styles have all of them:
3,786 pictures each = 1,911 base emoji + 1,875 skin-tone variants). ``ldm data prepare emoji``
keeps only ``emoji.json``, ``LICENSE`` and the 64 px PNGs, in ``$LDM_DATA_DIR/emoji/<style>/``.
Licences: Google images Apache-2.0; Twitter images CC-BY 4.0 (credit "Twemoji by Twitter, Inc.
and other contributors"). The apple and facebook sets are not licensed for this and not used.

Images are composited on white. Labels are the category (``EMOJI_CATEGORIES``).

Caption format (lower case, fields joined by ", ", most specific first, repeats dropped)::

    <name>, <short names...>, <category>, <subcategory>[, <skin tone>][, <style> style]
    "mouse face, mouse, animals & nature, animal mammal"
    "father christmas, santa, people & body, person fantasy, medium skin tone"

Short names and subcategories have ``_``/``-`` replaced by spaces so that a word-piece tokenizer
sees real words. The name leads because it is the most specific, human-readable field; a text
encoder learns it best when it always comes first and in the same form. The skin tone is in
*every* variant, since it changes the picture; the style phrase is added only with
``caption_style=True`` (the style is always available as the item's ``style`` field).
:func:`emoji_caption_variants` lists all variants (full first, name-only second, then name with
short names / subcategory / category); ``caption_mode`` picks one (see ``common.choose_caption``).

Split: validation holds the emoji whose *base* code point sequence (``unified`` of the base emoji,
e.g. ``1F385`` for every skin tone of FATHER CHRISTMAS) hashes below ``val_fraction`` (default
0.05) with ``stable_fraction("emoji:" + unified)``. All skin-tone variants and both styles of one
emoji therefore land in the same split, so validation never sees an emoji trained on in another
tone or style. With the default fraction: 3,594 train / 192 validation pictures per style.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from latent_diffusion.data import cache
from latent_diffusion.data.common import ImageCaptionDataset, check_split_args, in_split, unique
from latent_diffusion.validation import check_choice

VERSION = "16.0.0"
STYLES = ("google", "twitter")
DEFAULT_VAL_FRACTION = 0.05
LICENCES = {
    "google": "Apache-2.0 (Noto Emoji images; npm emoji-datasource-google)",
    "twitter": "CC-BY 4.0 (Twemoji by Twitter, Inc. and other contributors; npm emoji-datasource-twitter)",
}
# Unicode's own names of the Fitzpatrick modifiers, so captions match how people write them.
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}
# Fixed order (that of emoji-datasource's categories.json), so label indices never move.
EMOJI_CATEGORIES = (
    "Smileys & Emotion", "People & Body", "Component", "Animals & Nature", "Food & Drink",
    "Travel & Places", "Activities", "Objects", "Symbols", "Flags",
)
_CATEGORY_INDEX = {name.lower(): index for index, name in enumerate(EMOJI_CATEGORIES)}


@dataclass(frozen=True)
class EmojiRecord:
    """One emoji picture: a base emoji or one of its skin-tone variants, in one style."""

    style: str
    unified: str
    base: str
    image_path: Path
    name: str
    short_names: tuple[str, ...]
    category: str
    subcategory: str
    tone: str


def tone_phrase(modifier: str) -> str:
    """Caption words for a skin-variation key: ``1F3FD`` -> "medium skin tone"; two-person keys
    (``1F3FB-1F3FC``) -> "light skin tone and medium-light skin tone"."""
    tones = unique([SKIN_TONES.get(part.upper(), "") for part in modifier.split("-")])
    if not tones:
        raise ValueError(f"skin variation {modifier!r} has no known modifier; known: {list(SKIN_TONES)}")
    return " and ".join(tones)


def _words(text: str) -> str:
    return text.replace("_", " ").replace("-", " ").strip().lower()


def emoji_caption_variants(record: EmojiRecord, with_style: bool = False) -> list[str]:
    """All captions of ``record`` in the documented format: full first, name-only second."""
    tail = [record.tone] + ([f"{record.style} style"] if with_style else [])
    shorts = [_words(s) for s in record.short_names]
    fields = [
        [record.name, *shorts, record.category, record.subcategory],
        [record.name],
        [record.name, *shorts],
        [record.name, record.subcategory],
        [record.name, record.category],
    ]
    return unique([", ".join(unique(f + tail)) for f in fields])


def _record(style: str, folder: Path, entry: dict[str, Any], variant: dict[str, Any] | None,
            tone_key: str = "") -> EmojiRecord:
    source = variant if variant is not None else entry
    return EmojiRecord(
        style=style,
        unified=source["unified"],
        base=entry["unified"],
        image_path=folder / source["image"],
        name=entry["name"].strip().lower(),
        short_names=tuple(entry.get("short_names") or ()),
        category=entry["category"].strip().lower(),
        subcategory=_words(entry.get("subcategory") or ""),
        tone=tone_phrase(tone_key) if tone_key else "",
    )


def read_emoji_records(emoji_json: Path, image_dir: Path, style: str) -> tuple[list[EmojiRecord], int]:
    """Every picture ``style`` has (``has_img_<style>``), with the count of listed but missing files."""
    check_choice("style", style, STYLES)
    entries = json.loads(Path(emoji_json).read_text(encoding="utf-8"))
    present = set(os.listdir(image_dir)) if Path(image_dir).is_dir() else set()
    flag = f"has_img_{style}"
    records, missing = [], 0
    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        candidates = [(entry, None, "")] if entry.get(flag) else []
        for tone_key, variant in sorted((entry.get("skin_variations") or {}).items()):
            if variant.get(flag):
                candidates.append((entry, variant, tone_key))
        for base, variant, tone_key in candidates:
            source = variant if variant is not None else base
            if source["image"] in present:
                records.append(_record(style, Path(image_dir), base, variant, tone_key))
            else:
                missing += 1
    return records, missing


def prepare_style_from_package(package_dir: Path, style: str, dest: Path) -> dict[str, Any]:
    """Copy ``emoji.json``, ``LICENSE`` and the 64 px PNGs of an unpacked npm package into ``dest``."""
    package_dir = Path(package_dir)
    source_images = package_dir / "img" / style / "64"
    records, missing = read_emoji_records(package_dir / "emoji.json", source_images, style)
    (dest / "img").mkdir(parents=True, exist_ok=True)
    shutil.copy2(package_dir / "emoji.json", dest / "emoji.json")
    if (package_dir / "LICENSE").is_file():
        shutil.copy2(package_dir / "LICENSE", dest / "LICENSE")
    for record in records:
        shutil.copy2(record.image_path, dest / "img" / record.image_path.name)
    return {"dataset": "emoji", "style": style, "source": f"npm emoji-datasource-{style}@{VERSION}",
            "licence": LICENCES[style], "images": len(records), "missing_images": missing}


def style_dir(style: str, root: Path | None = None) -> Path:
    """Prepared folder of one style (``root`` defaults to ``$LDM_DATA_DIR/emoji``)."""
    return (Path(root) if root is not None else cache.dataset_dir("emoji")) / style


def prepare_emoji(styles: tuple[str, ...] = STYLES, force: bool = False) -> dict[str, float]:
    """Fetch the npm packages of ``styles`` and cache them; returns seconds spent per style."""
    timings = {}
    for style in styles:
        check_choice("style", style, STYLES)
        start = time.perf_counter()

        def build(tmp: Path, style: str = style) -> dict[str, Any]:
            with cache.scratch_dir() as scratch:
                tarball = cache.npm_pack(f"emoji-datasource-{style}@{VERSION}", scratch)
                keep = ("package/emoji.json", "package/LICENSE", f"package/img/{style}/64/")
                cache.extract_tar(tarball, scratch, lambda n: n.startswith(keep))
                return prepare_style_from_package(scratch / "package", style, tmp)

        cache.prepare_folder(style_dir(style), build, force=force)
        timings[style] = time.perf_counter() - start
    return timings


class EmojiDataset(ImageCaptionDataset):
    """Emoji pictures of the chosen ``styles`` in one split; items carry a ``style`` field."""

    class_names = EMOJI_CATEGORIES

    def __init__(self, split: str = "train", resolution: int = 64, channels: int = 3,
                 styles: tuple[str, ...] = STYLES, val_fraction: float = DEFAULT_VAL_FRACTION,
                 caption_mode: str = "full", caption_style: bool = False,
                 root: str | Path | None = None, skin_tones: bool = True) -> None:
        super().__init__(resolution, channels, caption_mode)
        check_split_args(split, val_fraction)
        if not styles:
            raise ValueError(f"styles={styles!r} is empty; choose some of {list(STYLES)}")
        self.caption_style = caption_style
        self.licence = "; ".join(f"{s}: {LICENCES[s]}" for s in STYLES if s in styles)
        self.records: list[EmojiRecord] = []
        missing = 0
        for style in styles:
            check_choice("styles", style, STYLES)
            folder = cache.require_prepared(style_dir(style, Path(root) if root else None), "emoji",
                                            f"{style} style")
            records, lost = read_emoji_records(folder / "emoji.json", folder / "img", style)
            missing += lost
            self.records += [r for r in records if in_split(f"emoji:{r.base}", split, val_fraction)
                             and (skin_tones or r.unified == r.base)]
        if missing:
            warnings.warn(f"emoji: {missing} pictures listed in emoji.json are missing and skipped",
                          stacklevel=2)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.records[index].image_path) as image:
            image.load()
            return image

    def caption_variants(self, index: int) -> list[str]:
        return emoji_caption_variants(self.records[index], self.caption_style)

    def label(self, index: int) -> int:
        return _CATEGORY_INDEX.get(self.records[index].category, -1)

    def key(self, index: int) -> str:
        record = self.records[index]
        return f"emoji/{record.style}/{record.unified}"

    def extra(self, index: int) -> dict[str, Any]:
        return {"style": self.records[index].style}


__all__ = [
    "EMOJI_CATEGORIES",
    "LICENCES",
    "SKIN_TONES",
    "STYLES",
    "EmojiDataset",
    "EmojiRecord",
    "emoji_caption_variants",
    "prepare_emoji",
    "prepare_style_from_package",
    "read_emoji_records",
    "style_dir",
    "tone_phrase",
]
