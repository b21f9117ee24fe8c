"""Readers: which picture of each package shows which (concept, tone).

Each reader lists a package's pictures as ``{(concept, tone): Picture}`` and counts what it could
not place (``Counter`` of reasons), so nothing is dropped silently. Pictures are not decoded here:
``render.py`` turns each into 128 px RGB.

* Twemoji (``@twemoji/svg``) and Fluent 3D (``@lobehub/fluent-emoji-3d``) name files by
  lower-case hex sequence: normalized directly.
* Noto (Debian ``fonts-noto-color-emoji``): colour bitmaps in the font's CBDT table. A glyph's
  sequence is its cmap codepoint, or for a ligature (ZWJ sequences, flags, keycaps, tones) the
  sequence of its GSUB components mapped back through the cmap.
* Fluent Color / Flat / High Contrast (``fluentui-emoji``): files are named by slug of the CLDR
  name plus a tone suffix (``thumbs-up-medium-dark.svg``, ``thumbs-up-default.svg`` for the base
  of a toned emoji); see ``fluent_slugs.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from latent_diffusion.data.emoji_styles.reference import Concept
from latent_diffusion.data.emoji_styles.sequences import normalize_sequence

Key = tuple[str, str]


@dataclass(frozen=True)
class Picture:
    """One source picture: an SVG file, a raster file, or PNG bytes from a font."""

    kind: str  # "svg", "raster" or "png"
    path: Path | None = None
    data: bytes | None = None


def _place(found: dict[Key, Picture], skipped: Counter, key: Key, picture: Picture,
           concepts: dict[str, Concept]) -> None:
    concept, tone = key
    if concept not in concepts:
        skipped["not in the reference list"] += 1
    elif tone not in concepts[concept].tones:
        skipped["tone the reference list lacks"] += 1
    elif key in found:
        skipped["duplicate of another file"] += 1
    else:
        found[key] = picture


def read_hex_named(folder: Path, suffix: str, kind: str, concepts: dict[str, Concept]) -> tuple[dict[Key, Picture], Counter]:
    """Files named ``<hex>-<hex>...<suffix>`` (Twemoji SVGs, Fluent 3D WebPs)."""
    found: dict[Key, Picture] = {}
    skipped: Counter = Counter()
    for path in sorted(Path(folder).glob(f"*{suffix}")):
        try:
            key = normalize_sequence(path.name[: -len(suffix)])
        except ValueError:
            skipped["file name is not a codepoint sequence"] += 1
            continue
        _place(found, skipped, key, Picture(kind, path=path), concepts)
    return found, skipped


def glyph_sequences(cmap: dict[int, str], ligatures: dict[str, list[list[str]]]) -> dict[str, list[int]]:
    """Glyph name -> codepoints, from the cmap and GSUB ligatures (``first glyph -> [components..., ligature]``).

    ``ligatures`` maps a first glyph to lists whose last element is the ligature glyph and the
    rest its further components (fontTools' ``LigatureSubst.ligatures`` flattened). Ligatures of
    ligatures (tones applied to a ZWJ sequence) resolve because components are looked up in the
    growing table, so they are processed until nothing new appears.
    """
    sequences: dict[str, list[int]] = {}
    for codepoint, glyph in sorted(cmap.items()):
        sequences.setdefault(glyph, [codepoint])
    pending = [(first, parts) for first, items in ligatures.items() for parts in items]
    while pending:
        left = []
        for first, parts in pending:
            components, ligature = [first, *parts[:-1]], parts[-1]
            if all(c in sequences for c in components):
                if ligature not in sequences:
                    sequences[ligature] = [p for c in components for p in sequences[c]]
            else:
                left.append((first, parts))
        if len(left) == len(pending):
            break
        pending = left
    return sequences


def read_noto(font_path: Path, concepts: dict[str, Concept]) -> tuple[dict[Key, Picture], Counter]:
    """Noto Color Emoji's CBDT bitmaps placed by cmap + GSUB ligatures."""
    from fontTools.ttLib import TTFont

    font = TTFont(str(font_path), lazy=True)
    ligatures: dict[str, list[list[str]]] = {}
    for lookup in font["GSUB"].table.LookupList.Lookup:
        for table in lookup.SubTable:
            table = getattr(table, "ExtSubTable", table)
            for first, items in (getattr(table, "ligatures", None) or {}).items():
                ligatures.setdefault(first, []).extend([*lig.Component, lig.LigGlyph] for lig in items)
    sequences = glyph_sequences(font.getBestCmap(), ligatures)
    found: dict[Key, Picture] = {}
    skipped: Counter = Counter()
    strike = font["CBDT"].strikeData[0]
    for glyph in sorted(strike):
        if glyph not in sequences:
            skipped["glyph with no codepoint sequence"] += 1
            continue
        bitmap = strike[glyph]
        data = getattr(bitmap, "imageData", None)
        if not data:
            skipped["glyph without PNG data"] += 1
            continue
        try:
            key = normalize_sequence(sequences[glyph])
        except ValueError:
            skipped["modifier-only glyph"] += 1
            continue
        _place(found, skipped, key, Picture("png", data=bytes(data)), concepts)
    return found, skipped


__all__ = ["Key", "Picture", "glyph_sequences", "read_hex_named", "read_noto"]
