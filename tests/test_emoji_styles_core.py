"""emoji-styles joins, slugs, captions and splits on known answers (no downloads)."""

import torch

from latent_diffusion.data.emoji_styles.captions import CaptionSampler, caption_variants
from latent_diffusion.data.emoji_styles.fluent_slugs import slug, slug_table
from latent_diffusion.data.emoji_styles.reference import Concept
from latent_diffusion.data.emoji_styles.sequences import normalize_sequence
from latent_diffusion.data.emoji_styles.sources import glyph_sequences
from latent_diffusion.data.emoji_styles.splits import composition_pairs, is_validation_concept

THUMBS = {"name": "thumbs up", "keywords": ["hand", "like", "thumbs up"], "category": "people & body",
          "subcategory": "hand fingers closed"}


def test_sequences_drop_fe0f_and_split_tones():
    assert normalize_sequence("1f44d-1f3fd") == ("1F44D", "1F3FD")
    assert normalize_sequence("2764-fe0f") == ("2764", "")
    assert normalize_sequence("1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3fd") == ("1F9D1-200D-1F91D-200D-1F9D1", "1F3FB-1F3FD")


def test_fluent_slugs_and_aliases():
    assert slug("man’s shoe") == "mans-shoe" and slug("piñata") == "pinata"
    concepts = {"1F44D": Concept("1F44D", "thumbs up", "", "", tones=["", "1F3FB", "1F3FF"]),
                "1F917": Concept("1F917", "smiling face with open hands", "", "", tones=[""])}
    table, aliased = slug_table(concepts)
    assert table["thumbs-up-default"] == ("1F44D", "") and table["thumbs-up-dark"] == ("1F44D", "1F3FF")
    assert table["hugging-face"] == ("1F917", "") and aliased == 1


def test_ligatures_of_ligatures_resolve():
    cmap = {0x1F468: "man", 0x200D: "zwj", 0x1F680: "rocket", 0x1F3FB: "light"}
    ligatures = {"astro": [["light", "astro_light"]], "man": [["zwj", "rocket", "astro"]]}
    assert glyph_sequences(cmap, ligatures)["astro_light"] == [0x1F468, 0x200D, 0x1F680, 0x1F3FB]


def test_captions_and_sampler_determinism():
    assert caption_variants(THUMBS, "1F3FD", "fluent-flat")[1] == "thumbs up, medium skin tone"
    sampler = CaptionSampler()
    draws = [sampler.compose(THUMBS, "1F3FD", "fluent-flat", torch.Generator().manual_seed(s)) for s in range(30)]
    again = [sampler.compose(THUMBS, "1F3FD", "fluent-flat", torch.Generator().manual_seed(s)) for s in range(30)]
    assert draws == again and len(set(draws)) > 5
    assert all("medium skin tone" in d for d in draws)
    assert any("flat" in d for d in draws) and any("flat" not in d for d in draws)


def test_composition_pairs_hold_out_one_style_of_training_concepts():
    concept_styles = {f"C{i}": {"noto", "twemoji", "fluent-flat"} for i in range(2000)}
    pairs = composition_pairs(concept_styles)
    assert 40 < len(pairs) < 160
    assert all(not is_validation_concept(c) for c, _ in pairs)
    assert len({c for c, _ in pairs}) == len(pairs)  # one style per concept
