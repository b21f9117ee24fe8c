"""The art styles of ``emoji-styles``: their packages, licences and words for captions.

Ids are fixed and never renumbered (a style classifier's classes and the composition split are
keyed by them). ``openmoji`` is opt-in: its CC-BY-SA 4.0 share-alike may bind a model trained on it.
"""

from __future__ import annotations

from dataclasses import dataclass

STYLES = ("noto", "twemoji", "fluent-3d", "fluent-color", "fluent-flat", "fluent-high-contrast")
OPTIONAL_STYLES = ("openmoji",)
ALL_STYLES = STYLES + OPTIONAL_STYLES

# How a caption names each style; the first phrase is the canonical one ("cat face, flat style").
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "noto": ("noto",),
    "twemoji": ("twemoji",),
    "fluent-3d": ("3d",),
    "fluent-color": ("color",),
    "fluent-flat": ("flat",),
    "fluent-high-contrast": ("high contrast", "outline"),
    "openmoji": ("openmoji",),
}


@dataclass(frozen=True)
class Package:
    """Where a style's pictures come from, and on what terms."""

    registry: str  # "npm" or "debian"
    name: str
    version: str
    licence: str
    attribution: str = ""

    @property
    def spec(self) -> str:
        """``name@version`` for npm, ``name`` for Debian (its version is the archive's)."""
        return f"{self.name}@{self.version}" if self.registry == "npm" else self.name

    def describe(self) -> str:
        """``npm fluentui-emoji@1.3.0``-style source line for manifests and cards."""
        return f"{self.registry} {self.name}@{self.version}"


NOTO = Package("debian", "fonts-noto-color-emoji", "2.042",
               "OFL-1.1 (font), Apache-2.0 (art)", "Noto Color Emoji by Google")
TWEMOJI = Package("npm", "@twemoji/svg", "15.0.0", "CC-BY-4.0",
                  "Twemoji by Twitter, Inc. and other contributors, CC-BY 4.0 (https://github.com/jdecked/twemoji)")
FLUENT_3D = Package("npm", "@lobehub/fluent-emoji-3d", "1.1.0", "MIT", "Fluent Emoji by Microsoft")
FLUENT_SVG = Package("npm", "fluentui-emoji", "1.3.0", "MIT", "Fluent Emoji by Microsoft")
OPENMOJI = Package("npm", "openmoji", "17.0.0", "CC-BY-SA-4.0", "OpenMoji, the open-source emoji project (openmoji.org)")
PACKAGES: dict[str, Package] = {
    "noto": NOTO, "twemoji": TWEMOJI, "fluent-3d": FLUENT_3D, "fluent-color": FLUENT_SVG,
    "fluent-flat": FLUENT_SVG, "fluent-high-contrast": FLUENT_SVG, "openmoji": OPENMOJI,
}
# The names, categories and keywords of every concept come from these (not pictures).
REFERENCE = Package("npm", "emoji-datasource", "16.0.0", "MIT", "emoji-data by Cal Henderson and contributors")
KEYWORDS = Package("npm", "cldr-annotations-full", "48.2.0", "Unicode-3.0", "Unicode CLDR")
DERIVED_KEYWORDS = Package("npm", "cldr-annotations-derived-full", "48.2.0", "Unicode-3.0", "Unicode CLDR")


def check_styles(styles: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Validate a style selection (non-empty, known, no repeats) and return it as a tuple."""
    styles = tuple(styles)
    if not styles:
        raise ValueError(f"styles is empty; choose some of {list(ALL_STYLES)}")
    for style in styles:
        if style not in ALL_STYLES:
            raise ValueError(f"unknown emoji style {style!r}; choose from {list(ALL_STYLES)} "
                             f"({', '.join(OPTIONAL_STYLES)} is opt-in: CC-BY-SA 4.0)")
    if len(set(styles)) != len(styles):
        raise ValueError(f"styles={list(styles)} repeats a style")
    return styles


__all__ = ["ALL_STYLES", "DERIVED_KEYWORDS", "KEYWORDS", "OPTIONAL_STYLES", "PACKAGES", "REFERENCE", "STYLES",
           "STYLE_WORDS", "Package", "check_styles"]
