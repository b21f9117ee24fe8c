"""``emoji-styles``: about 1,900 emoji concepts drawn in six art styles, 128 px, keyword captions.

One record per (concept, style, tone) picture, joined across packages by codepoint sequence
(``sequences.py``); see ``prepare.py`` for how it is built, ``captions.py`` for the captions,
``splits.py`` for the validation and composition splits and ``dataset.py`` for loading.
"""

from latent_diffusion.data.emoji_styles import prepare, splits, styles
from latent_diffusion.data.emoji_styles.styles import ALL_STYLES, OPTIONAL_STYLES, STYLE_WORDS, STYLES

__all__ = ["ALL_STYLES", "OPTIONAL_STYLES", "STYLES", "STYLE_WORDS", "prepare", "splits", "styles"]
