"""Captions of emoji-styles pictures: fixed variants for evaluation, a fresh one per step for training.

Fields, all lower case: the CLDR name ("thumbs up"), CLDR keywords ("hand", "like", "yes"), the
category and subcategory, the skin tone in Unicode's words ("medium-dark skin tone", only on toned
pictures: the tone changes the picture, so it is always said) and the style in words
(``styles.STYLE_WORDS``: "3d", "flat", "high contrast" or "outline", "noto", "twemoji", "color").

:func:`caption_variants` (deterministic; ``caption_mode`` full/name/variant/random pick from it)::

    "thumbs up, +1, good, hand, like, thumb, up, yes, people & body, hand fingers closed, medium skin tone"
    "thumbs up, medium skin tone"                     (the name-only variant, second)

:class:`CaptionSampler` (``caption_mode: compose``) composes a new caption on every call from a
``torch.Generator``: the name (always when no keyword is drawn, else with ``name_prob``), 0 to
``max_keywords`` keywords in random order, the tone, and the style phrase with ``style_prob`` in one
of several templates; e.g. for a flat medium-toned thumbs up::

    "thumbs up, like, medium skin tone, flat style"     "hand, thumbs up, medium skin tone"
    "thumbs up, yes, medium skin tone in flat style"    "flat thumbs up, medium skin tone"

No picture has one fixed caption, and every draw comes from the generator passed in (the trainer
seeds one per item and step), so a resumed run composes the same captions. The templates never
use the forms of the held-out rewordings that adherence evaluates ("an emoji of a ...", "... icon",
"a simple drawing of ...", "..., emoji style"; ``evaluation/prompts.py``), so those stay unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latent_diffusion.data.common import unique
from latent_diffusion.data.emoji import tone_phrase
from latent_diffusion.data.emoji_styles.styles import STYLE_WORDS
from latent_diffusion.validation import check_in_range

STYLE_TEMPLATES = ("{subject}, {style} style", "{subject} in {style} style", "{style} {subject}",
                   "{subject}, {style}")
PLAIN_TEMPLATES = ("{subject}", "{subject} emoji")


def style_phrase(style: str) -> str:
    """The canonical words of a style in a caption: "flat style"."""
    return f"{STYLE_WORDS[style][0]} style"


def caption_variants(meta: dict[str, Any], tone: str, style: str, with_style: bool = False) -> list[str]:
    """Deterministic captions of one picture: full first, name-only second, then partial ones."""
    name = meta["name"]
    tail = ([tone_phrase(tone)] if tone else []) + ([style_phrase(style)] if with_style else [])
    keywords = [k for k in meta.get("keywords", []) if k != name]
    fields = [
        [name, *keywords, meta.get("category", ""), meta.get("subcategory", "")],
        [name],
        [name, *keywords],
        [name, meta.get("subcategory", "")],
        [name, meta.get("category", "")],
    ]
    return unique([", ".join(unique(f + tail)) for f in fields])


def _pick(options: tuple[str, ...] | list[str], generator: torch.Generator) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


@dataclass(frozen=True)
class CaptionSampler:
    """Composes a fresh caption per call; see the module docstring."""

    style_prob: float = 0.7
    name_prob: float = 0.9
    max_keywords: int = 3

    def __post_init__(self) -> None:
        check_in_range("style_prob", self.style_prob, 0.0, 1.0)
        check_in_range("name_prob", self.name_prob, 0.0, 1.0)
        if self.max_keywords < 0:
            raise ValueError(f"max_keywords={self.max_keywords} must be >= 0")

    def compose(self, meta: dict[str, Any], tone: str, style: str, generator: torch.Generator) -> str:
        """One caption of the picture (``meta`` is its concepts.json entry), drawn from ``generator``."""
        name = meta["name"]
        keywords = [k for k in meta.get("keywords", []) if k != name]
        most = min(self.max_keywords, len(keywords))
        count = int(torch.randint(most + 1, (), generator=generator))
        order = torch.randperm(len(keywords), generator=generator)[:count].tolist()
        words = [keywords[i] for i in order]
        with_name = not words or float(torch.rand((), generator=generator)) < self.name_prob
        if with_name:  # the name goes anywhere among the keywords, not always first
            words.insert(int(torch.randint(len(words) + 1, (), generator=generator)), name)
        subject = ", ".join(unique(words + ([tone_phrase(tone)] if tone else [])))
        if float(torch.rand((), generator=generator)) < self.style_prob:
            template = _pick(STYLE_TEMPLATES, generator)
            return template.format(subject=subject, style=_pick(STYLE_WORDS[style], generator))
        return _pick(PLAIN_TEMPLATES, generator).format(subject=subject)


__all__ = ["CaptionSampler", "PLAIN_TEMPLATES", "STYLE_TEMPLATES", "caption_variants", "style_phrase"]
