"""What each concept is called: the reference list every package is joined against.

Names, categories, subcategories, short names and the (concept, tone) pairs that exist come from
npm ``emoji-datasource``'s ``emoji.json`` (1,911 emoji with their skin variations). The caption
name is CLDR's English ``tts`` name where CLDR has one ("thumbs up" rather than Unicode's "THUMBS UP
SIGN"), and the keywords are CLDR's ``default`` list: ``cldr-annotations-full`` covers single
characters, ``cldr-annotations-derived-full`` ZWJ sequences, flags and keycaps. Both key emoji by
their characters with FE0F dropped, so they join by :func:`sequences.from_text`. Tone variants'
keywords (they add "light skin tone" etc.) are not used: the tone is its own caption field.
The ``Component`` category (bare skin-tone swatches and hair styles) is left out: those are parts
of emoji, not pictures anyone asks for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_diffusion.data.emoji_styles.sequences import from_text, normalize_sequence

EXCLUDED_CATEGORIES = ("component",)


@dataclass
class Concept:
    """One emoji, whatever its style or tone."""

    concept: str
    name: str
    category: str
    subcategory: str
    short_names: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    unicode_name: str = ""
    tones: list[str] = field(default_factory=list)  # "" (the base picture) first

    def to_json(self) -> dict[str, Any]:
        """The concepts.json entry (the concept id is the key)."""
        return {"name": self.name, "category": self.category, "subcategory": self.subcategory,
                "short_names": self.short_names, "keywords": self.keywords, "unicode_name": self.unicode_name,
                "tones": self.tones}


def _words(text: str) -> str:
    return text.replace("_", " ").replace("-", " ").strip().lower()


def read_annotations(*paths: Path) -> dict[str, dict[str, Any]]:
    """CLDR annotations of base pictures (tone variants dropped), keyed by concept id."""
    table: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        inner = data.get("annotations") or data.get("annotationsDerived") or {}
        for text, entry in (inner.get("annotations") or {}).items():
            try:
                concept, tone = from_text(text)
            except ValueError:
                continue
            if not tone and concept not in table:
                table[concept] = entry
    return table


def read_reference(emoji_json: Path, annotations: dict[str, dict[str, Any]]) -> dict[str, Concept]:
    """Every concept of ``emoji.json`` (Component excluded), named and keyworded from CLDR."""
    entries = json.loads(Path(emoji_json).read_text(encoding="utf-8"))
    concepts: dict[str, Concept] = {}
    for entry in sorted(entries, key=lambda e: (e.get("sort_order", 0), e["unified"])):
        category = entry["category"].strip().lower()
        if category in EXCLUDED_CATEGORIES:
            continue
        concept, _ = normalize_sequence(entry["unified"])
        cldr = annotations.get(concept, {})
        unicode_name = (entry.get("name") or "").strip().lower()
        name = ((cldr.get("tts") or [unicode_name])[0]).strip().lower()
        tones = [""] + sorted(normalize_sequence(v["unified"])[1] for v in (entry.get("skin_variations") or {}).values())
        concepts[concept] = Concept(
            concept=concept, name=name, category=category, subcategory=_words(entry.get("subcategory") or ""),
            short_names=[_words(s) for s in entry.get("short_names") or []],
            keywords=[k.strip().lower() for k in cldr.get("default") or [] if k.strip()],
            unicode_name=unicode_name, tones=tones)
    return concepts


__all__ = ["EXCLUDED_CATEGORIES", "Concept", "read_annotations", "read_reference"]
