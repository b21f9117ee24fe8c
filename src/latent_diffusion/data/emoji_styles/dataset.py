"""``EmojiStylesDataset``: one split of the prepared emoji-styles folder, at any resolution <= 128."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from latent_diffusion.data import cache
from latent_diffusion.data.common import CAPTION_MODES, ImageCaptionDataset, choose_caption
from latent_diffusion.data.emoji import EMOJI_CATEGORIES
from latent_diffusion.data.emoji_styles.captions import CaptionSampler, caption_variants
from latent_diffusion.data.emoji_styles.prepare import DATASET, dataset_dir
from latent_diffusion.data.emoji_styles.splits import (
    DEFAULT_COMPOSITION_FRACTION,
    DEFAULT_VAL_FRACTION,
    SPLITS,
    composition_pairs,
    split_of,
)
from latent_diffusion.data.emoji_styles.styles import STYLES, check_styles
from latent_diffusion.validation import check_choice, check_in_range

# The caption modes of every dataset, plus the caption sampler's.
STYLE_CAPTION_MODES = (*CAPTION_MODES, "compose")
_CATEGORY_INDEX = {name.lower(): index for index, name in enumerate(EMOJI_CATEGORIES)}


@dataclass(frozen=True)
class StyleRecord:
    """One picture: a concept at one tone in one style."""

    concept: str
    tone: str
    style: str
    path: Path
    source: str


def read_records(folder: Path) -> list[StyleRecord]:
    """Every record of a prepared folder, in file order."""
    records = []
    with open(folder / "records.jsonl", encoding="utf-8") as lines:
        for line in lines:
            r = json.loads(line)
            records.append(StyleRecord(r["concept"], r["tone"], r["style"], folder / r["file"], r["source"]))
    return records


class EmojiStylesDataset(ImageCaptionDataset):
    """The pictures of ``split`` in the chosen ``styles``; items carry ``style``, ``concept``, ``tone``.

    ``caption_mode``: ``compose`` draws a fresh caption per call (:class:`CaptionSampler`, from
    torch's global generator; trainers call :meth:`compose_caption` with their own), the other
    modes pick from :func:`caption_variants` as every dataset does. ``caption_style`` adds the
    style phrase to the fixed variants. ``skin_tones=False`` keeps base pictures only.
    """

    class_names = EMOJI_CATEGORIES

    def __init__(self, split: str = "train", resolution: int = 64, channels: int = 3,
                 styles: tuple[str, ...] = STYLES, caption_mode: str = "compose", caption_style: bool = True,
                 skin_tones: bool = True, root: str | Path | None = None,
                 val_fraction: float = DEFAULT_VAL_FRACTION,
                 composition_fraction: float = DEFAULT_COMPOSITION_FRACTION,
                 sampler: CaptionSampler | None = None) -> None:
        check_choice("caption_mode", caption_mode, STYLE_CAPTION_MODES)
        super().__init__(resolution, channels, "full" if caption_mode == "compose" else caption_mode)
        check_choice("split", split, SPLITS)
        check_in_range("val_fraction", val_fraction, 0.0, 1.0)
        check_in_range("composition_fraction", composition_fraction, 0.0, 1.0)
        if resolution > 128:
            raise ValueError(f"resolution={resolution}: emoji-styles pictures are prepared at 128 px; "
                             "choose 128 or less")
        self.styles = check_styles(styles)
        self.compose_mode = caption_mode == "compose"
        self.caption_style = caption_style
        self.sampler = sampler or CaptionSampler()
        folder = cache.require_prepared(Path(root) if root else dataset_dir(), DATASET)
        self.manifest = cache.read_manifest(folder)
        missing = [s for s in self.styles if s not in self.manifest.get("styles", {})]
        if missing:
            raise ValueError(f"styles {missing} are not in the prepared emoji-styles folder {str(folder)!r}; "
                             f"prepared: {sorted(self.manifest.get('styles', {}))}. Prepare them with "
                             "`ldm data prepare emoji-styles --force` (see --help for --styles)")
        self.concepts: dict[str, dict[str, Any]] = json.loads((folder / "concepts.json").read_text(encoding="utf-8"))
        everything = read_records(folder)
        prepared_styles: dict[str, set[str]] = defaultdict(set)
        for r in everything:
            prepared_styles[r.concept].add(r.style)
        self.composition = composition_pairs(prepared_styles, composition_fraction, val_fraction)
        self.val_fraction = val_fraction
        self.records = [r for r in everything if r.style in self.styles and (skin_tones or not r.tone)
                        and (split == "all" or split_of(r.concept, r.style, self.composition, val_fraction) == split)]
        self.licence = "; ".join(f"{s}: {self.manifest['styles'][s]['licence']}" for s in self.styles)

    def __len__(self) -> int:
        return len(self.records)

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.records[index].path) as image:
            image.load()
            return image

    def name(self, index: int) -> str:
        """The CLDR name of item ``index``'s concept."""
        return self.concepts[self.records[index].concept]["name"]

    def caption_variants(self, index: int) -> list[str]:
        r = self.records[index]
        return caption_variants(self.concepts[r.concept], r.tone, r.style, self.caption_style)

    def compose_caption(self, index: int, generator: torch.Generator) -> str:
        """A freshly composed caption of item ``index``, every draw from ``generator``."""
        r = self.records[index]
        return self.sampler.compose(self.concepts[r.concept], r.tone, r.style, generator)

    def caption(self, index: int) -> str:
        if self.compose_mode:
            return self.compose_caption(index, torch.default_generator)
        return choose_caption(self.caption_variants(index), self.caption_mode, self.key(index))

    def label(self, index: int) -> int:
        return _CATEGORY_INDEX.get(self.concepts[self.records[index].concept]["category"], -1)

    def key(self, index: int) -> str:
        r = self.records[index]
        return f"emoji-styles/{r.style}/{r.concept}{'_' + r.tone if r.tone else ''}"

    def split_of(self, index: int) -> str:
        """``train``, ``validation`` or ``composition``: the split item ``index`` belongs to."""
        r = self.records[index]
        return split_of(r.concept, r.style, self.composition, self.val_fraction)

    def extra(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        return {"style": r.style, "concept": r.concept, "tone": r.tone}


__all__ = ["STYLE_CAPTION_MODES", "EmojiStylesDataset", "StyleRecord", "read_records"]
