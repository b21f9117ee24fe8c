"""Fluent Color / Flat / High Contrast (npm ``fluentui-emoji``): file slugs -> (concept, tone).

Files are named by the slug of the emoji's CLDR name (lower case, accents folded, apostrophes
dropped, every other run of non-alphanumerics one ``-``) plus, for emoji with skin tones, a tone
suffix: ``-default`` (the base picture), ``-light``, ``-medium-light``, ``-medium``,
``-medium-dark``, ``-dark``. ``icons/modern`` is Fluent Color, ``icons/flat`` Flat and
``icons/high-contrast`` High Contrast (base pictures only, one colour).

Where Fluent uses an older or different name than CLDR 48 the rule misses, so :data:`ALIASES`
maps those concepts to their Fluent slug (34 concepts in fluentui-emoji 1.3.0, found by listing
the slugs no rule reached). Fluent has no country flags, families or kiss/couple sequences;
those concepts simply have no Fluent pictures. Files that match no concept are counted.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

from latent_diffusion.data.emoji_styles.reference import Concept
from latent_diffusion.data.emoji_styles.sources import Key, Picture, _place

FOLDERS = {"fluent-color": "modern", "fluent-flat": "flat", "fluent-high-contrast": "high-contrast"}
TONE_SUFFIXES = {"default": "", "light": "1F3FB", "medium-light": "1F3FC", "medium": "1F3FD",
                 "medium-dark": "1F3FE", "dark": "1F3FF"}
# concept id -> Fluent's slug, where the rule on the CLDR name misses.
ALIASES = {
    "0023-20E3": "keycap-hashtag", "002A-20E3": "keycap-asterisk",
    "1F426-200D-2B1B": "blackbird", "1F426-200D-1F525": "phoenix-bird",
    "1F917": "hugging-face", "1F635": "knocked-out-face", "1F621": "pouting-face",
    "1F53A": "red-triangle", "1F959": "stuffedbread-flat",
    "1F471": "person-blonde-hair", "1F471-200D-2642": "man-blonde-hair", "1F471-200D-2640": "woman-blonde-hair",
    "1F9CF": "person-deaf", "1F9CF-200D-2642": "man-deaf", "1F9CF-200D-2640": "woman-deaf",
    "1F9DC": "person-merpeople", "1F9DC-200D-2642": "man-merpeople", "1F9DC-200D-2640": "woman-merpeople",
    "1F46F": "person-with-bunny-ears", "1F46F-200D-2642": "man-with-bunny-ears",
    "1F46F-200D-2640": "woman-with-bunny-ears",
    "1F93C": "person-wrestling", "1F93C-200D-2642": "man-wrestling", "1F93C-200D-2640": "woman-wrestling",
    "1F9DD": "person-elf", "1F9DA": "person-fairy", "1F9DE": "person-genie", "1F9D9": "person-mage",
    "1F9B8": "person-superhero", "1F9B9": "person-supervillain", "1F9DB": "person-vampire",
    "1F9DF": "person-zombie", "1F6A5": "horizontal-traffic", "1F6A6": "vertical-traffic",
}


def slug(name: str) -> str:
    """Fluent's file slug of a CLDR name: "man’s shoe" -> "mans-shoe", "piñata" -> "pinata"."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    folded = folded.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")


def slug_table(concepts: dict[str, Concept]) -> tuple[dict[str, Key], int]:
    """Every file slug a concept's pictures may have -> (concept, tone), and how many concepts used an alias."""
    table: dict[str, Key] = {}
    aliased = 0
    for concept, meta in concepts.items():
        base = ALIASES.get(concept) or slug(meta.name)
        aliased += concept in ALIASES
        single_tones = [t for t in meta.tones if "-" not in t]
        table.setdefault(base, (concept, ""))
        if len(single_tones) > 1:  # a toned emoji: its base picture is "-default"
            for suffix, tone in TONE_SUFFIXES.items():
                if tone in single_tones:
                    table.setdefault(f"{base}-{suffix}", (concept, tone))
    return table, aliased


def read_fluent(icons: Path, style: str, concepts: dict[str, Concept]) -> tuple[dict[Key, Picture], Counter]:
    """The SVGs of one Fluent style (``icons/<folder>/*.svg``) placed by slug."""
    table, _ = slug_table(concepts)
    found: dict[Key, Picture] = {}
    skipped: Counter = Counter()
    for path in sorted((Path(icons) / FOLDERS[style]).glob("*.svg")):
        key = table.get(path.stem)
        if key is None:
            skipped["slug that names no concept"] += 1
            continue
        _place(found, skipped, key, Picture("svg", path=path), concepts)
    return found, skipped


__all__ = ["ALIASES", "FOLDERS", "TONE_SUFFIXES", "read_fluent", "slug", "slug_table"]
