"""Concept ids: one emoji across packages, whatever file names or tone variants they use.

A concept id is the emoji's codepoint sequence in upper-case hex joined by ``-``, with the
variation selector FE0F dropped (packages disagree on where they keep it) and the skin-tone
modifiers 1F3FB-1F3FF split off as the picture's tone: ``1f44d-1f3fd`` -> (``1F44D``, ``1F3FD``);
two-person sequences keep both tones in order (``1F9D1-200D-1F91D-200D-1F9D1``, ``1F3FB-1F3FD``).
"""

from __future__ import annotations

from collections.abc import Iterable

VARIATION_SELECTOR = 0xFE0F
TONE_MODIFIERS = range(0x1F3FB, 0x1F400)


def parse_hex(sequence: str) -> list[int]:
    """``"1f44d-1F3FD"`` or ``"1f44d_1f3fd"`` -> ``[0x1F44D, 0x1F3FD]``."""
    parts = [p for p in sequence.replace("_", "-").split("-") if p]
    try:
        return [int(p, 16) for p in parts]
    except ValueError:
        raise ValueError(f"{sequence!r} is not a hex codepoint sequence such as '1f44d-1f3fd'") from None


def normalize_sequence(codepoints: str | Iterable[int]) -> tuple[str, str]:
    """(concept id, tone) of a hex string or a list of codepoints; see the module docstring."""
    points = parse_hex(codepoints) if isinstance(codepoints, str) else list(codepoints)
    kept = [p for p in points if p != VARIATION_SELECTOR and p not in TONE_MODIFIERS]
    tones = [p for p in points if p in TONE_MODIFIERS]
    if not kept:
        raise ValueError(f"sequence {codepoints!r} holds no emoji besides modifiers")
    return "-".join(f"{p:04X}" for p in kept), "-".join(f"{p:04X}" for p in tones)


def from_text(text: str) -> tuple[str, str]:
    """(concept id, tone) of an emoji given as characters (CLDR annotation keys)."""
    return normalize_sequence(ord(ch) for ch in text)


__all__ = ["TONE_MODIFIERS", "VARIATION_SELECTOR", "from_text", "normalize_sequence", "parse_hex"]
