"""The fixed splits of emoji-styles: validation concepts, and held-out (concept, style) pairs.

* **validation**: every picture (all styles and tones) of the concepts whose id hashes below
  ``val_fraction`` (``stable_fraction("emoji-styles:" + concept)``, default 0.05), so no
  validation concept is ever seen in training, in any style.
* **composition**: among the other concepts, those with at least ``MIN_STYLES`` default styles
  whose ``stable_fraction("emoji-styles-composition:" + concept)`` is below ``composition_fraction``
  (default 0.05) have one style held out of training: the style at position
  ``int(stable_fraction("emoji-styles-held-style:" + concept) * n)`` of the concept's n default
  styles (in ``styles.STYLES`` order; the opt-in OpenMoji is never held out, so opting in to it
  leaves the splits as they were). Those pictures form the ``composition`` split; the concept's
  other styles stay in ``train``. So "cat face, flat style" can be asked of a model that saw cat
  faces in other styles and flat things, but never a flat cat face.
* **train**: everything else. ``all`` = train + validation + composition.

Like every split here they are pure functions of ids: the same on every machine, and independent
of which styles a run loads (the held-out style is chosen among the styles *prepared*, not loaded).
"""

from __future__ import annotations

from latent_diffusion.data.common import stable_fraction
from latent_diffusion.data.emoji_styles.styles import STYLES

DEFAULT_VAL_FRACTION = 0.05
DEFAULT_COMPOSITION_FRACTION = 0.05
MIN_STYLES = 3
SPLITS = ("train", "validation", "composition", "all")


def is_validation_concept(concept: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> bool:
    """Whether ``concept`` (all its pictures) is in the validation split."""
    return stable_fraction("emoji-styles:" + concept) < val_fraction


def composition_pairs(concept_styles: dict[str, set[str]], fraction: float = DEFAULT_COMPOSITION_FRACTION,
                      val_fraction: float = DEFAULT_VAL_FRACTION) -> set[tuple[str, str]]:
    """The held-out (concept, style) pairs, from each concept's prepared styles; see the module docstring."""
    pairs = set()
    for concept, styles in concept_styles.items():
        ordered = [s for s in STYLES if s in styles]
        if len(ordered) < MIN_STYLES or is_validation_concept(concept, val_fraction):
            continue
        if stable_fraction("emoji-styles-composition:" + concept) >= fraction:
            continue
        held = ordered[int(stable_fraction("emoji-styles-held-style:" + concept) * len(ordered))]
        pairs.add((concept, held))
    return pairs


def split_of(concept: str, style: str, pairs: set[tuple[str, str]], val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """``train``, ``validation`` or ``composition`` for one picture."""
    if is_validation_concept(concept, val_fraction):
        return "validation"
    return "composition" if (concept, style) in pairs else "train"


__all__ = ["DEFAULT_COMPOSITION_FRACTION", "DEFAULT_VAL_FRACTION", "MIN_STYLES", "SPLITS", "composition_pairs",
           "is_validation_concept", "split_of"]
