"""Generalization metrics: closed-form cases of the pure functions, and ``ldm eval`` on a fake
emoji-styles corpus with samplers whose answers are known (a model that copies its training set)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from latent_diffusion.data import build_dataset
from latent_diffusion.data.emoji_styles import captions
from latent_diffusion.data.emoji_styles.styles import STYLES
from latent_diffusion.evaluation import emoji_styles, features_cache, runner
from latent_diffusion.evaluation.adherence import retrieval_ranks
from latent_diffusion.evaluation.cli import format_table
from latent_diffusion.evaluation.generalization import (LinearProbe, copy_share, mean_pairwise_distance,
                                                        neighbour_ratios, pixel_distance)
from tests.test_eval_cli import ldm, tiny_text_model


@pytest.fixture(autouse=True)
def one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(features_cache, "default_cache_dir", lambda: tmp_path / "default-feature-cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ pure functions


def test_exact_copy_has_ratio_zero_and_midpoint_ratio_one():
    refs = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    found = neighbour_ratios(torch.tensor([[4.0, 0.0], [2.0, 0.0], [1.0, 0.0]]), refs)
    assert found.ratio.tolist() == pytest.approx([0.0, 1.0, 1 / 3])
    assert found.nearest.tolist() == [1, 0, 0] and found.distance.tolist() == pytest.approx([0.0, 2.0, 1.0])
    assert copy_share(found.ratio) == pytest.approx(1 / 3)  # 1/3 itself is not below the threshold


def test_grouped_second_neighbour_skips_near_duplicates_of_the_nearest():
    # A and A' are one drawing in two tones (one group); B is another drawing.
    refs = torch.tensor([[0.0, 0.0], [0.5, 0.0], [10.0, 0.0]])
    sample = torch.tensor([[0.1, 0.0]])
    assert neighbour_ratios(sample, refs).ratio.item() == pytest.approx(0.1 / 0.4)
    grouped = neighbour_ratios(sample, refs, groups=["A", "A", "B"])
    assert grouped.ratio.item() == pytest.approx(0.1 / 9.9)


def test_neighbour_ratio_bad_inputs():
    refs = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="dimension"):
        neighbour_ratios(torch.zeros(1, 3), refs)
    with pytest.raises(ValueError, match="groups has 2 ids"):
        neighbour_ratios(torch.zeros(1, 2), refs, groups=["a", "b"])
    with pytest.raises(ValueError, match="at least two groups"):
        neighbour_ratios(torch.zeros(1, 2), refs, groups=["a", "a", "a"])
    with pytest.raises(ValueError, match="non-empty"):
        neighbour_ratios(torch.zeros(0, 2), refs)


def test_pairwise_distance_closed_form():
    same = torch.zeros(4, 3, 2, 2)
    assert mean_pairwise_distance(same) == 0.0
    # Constant images at -1, 0 and 1: pairwise |differences| 1, 2, 1 -> mean 4/3 in [-1, 1] units.
    levels = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2)
    assert mean_pairwise_distance(levels) == pytest.approx(4 / 3 * 127.5)
    assert pixel_distance(levels[:1], levels[2:]).item() == pytest.approx(255.0)
    with pytest.raises(ValueError, match="at least two images"):
        mean_pairwise_distance(same[:1])


def test_linear_probe_separates_clusters_and_is_deterministic():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:3] * 3
    labels = [name for name in ("a", "b", "c") for _ in range(40)]
    # unbalanced on purpose: class "c" is rare
    features = torch.cat([centres[i] + 0.3 * torch.randn(n, 4, generator=generator)
                          for i, n in enumerate((40, 40, 40))])
    keep = list(range(100)) + [110, 111]
    probe = LinearProbe.fit(features[keep], [labels[i] for i in keep])
    assert probe.classes == ("a", "b", "c")
    test = torch.cat([centres + 0.3 * torch.randn(3, 4, generator=generator) for _ in range(10)])
    assert probe.accuracy(test, ["a", "b", "c"] * 10) == 1.0
    again = LinearProbe.fit(features[keep], [labels[i] for i in keep])
    assert torch.equal(probe.weight, again.weight) and torch.equal(probe.bias, again.bias)
    with pytest.raises(ValueError, match="two classes"):
        LinearProbe.fit(features[:5], ["a"] * 5)
    with pytest.raises(ValueError, match="dimension"):
        probe.predict(torch.zeros(1, 5))


def test_concept_ranks_score_each_concept_by_its_best_picture():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.8]])
    ids = ["x", "x", "y", "z"]
    queries = torch.tensor([[1.0, 0.05], [0.0, 1.0], [0.6, 0.8]])
    # query 0: x best (both x pictures beat the rest, but x counts once) -> rank 1;
    # query 1: y exact -> 1; query 2 asks for y: z (exact) beats it, x does not -> rank 2.
    ranks = emoji_styles.concept_ranks(queries, ["x", "y", "y"], gallery, ids)
    assert ranks.tolist() == [1, 1, 2]


def test_excluded_rows_are_not_retrieved():
    # The query's own drawing (row 0) would rank it first; without it, the best picture of its concept
    # (row 2, cosine 0.6) is beaten by row 1 (concept b, cosine 0.8): second, among pictures and concepts.
    gallery = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    ids, query = ["a", "b", "a", "c"], torch.tensor([[1.0, 0.0]])
    own = torch.tensor([[True, False, False, False]])
    assert retrieval_ranks(query, ["a"], gallery, ids).ranks == [1]
    assert retrieval_ranks(query, ["a"], gallery, ids, exclude=own).ranks == [2]
    assert emoji_styles.concept_ranks(query, ["a"], gallery, ids, exclude=own).tolist() == [2]
    every_a = torch.tensor([[True, False, True, False]])
    with pytest.raises(ValueError, match="hides every gallery row"):
        retrieval_ranks(query, ["a"], gallery, ids, exclude=every_a)
    with pytest.raises(ValueError, match="hides every gallery row"):
        emoji_styles.concept_ranks(query, ["a"], gallery, ids, exclude=every_a)
    with pytest.raises(ValueError, match=r"bool \[queries, gallery\] = \[1, 4\]"):
        retrieval_ranks(query, ["a"], gallery, ids, exclude=own[:, :3])


def test_real_drawings_are_ranked_without_their_own_drawing():
    # Concept a: style s1 in two tones (rows 0, 1) and s2; b: s1 and s2; c: s1 only, so it has no other
    # drawing to be found by and stands in for nothing. Cosines worked by hand:
    #   a/s1 [1, 0] (its tone row hidden too): a/s2 0.6 < b/s1 0.8, b/s2 0.75, c 0.71  -> rank 4
    #   a/s2 [0.6, 0.8]: best a is the tone row, 0.61 < b/s1 0.96, b/s2 0.98, c 0.99     -> rank 4
    #   b/s1 [0.8, 0.6]: b/s2 0.997 > c 0.990                                           -> rank 1
    #   b/s2 [0.75, 0.66]: b/s1 0.997 < c 0.998                                          -> rank 2
    rows = [("a", "s1", ""), ("a", "s1", "1F3FB"), ("a", "s2", ""), ("b", "s1", ""), ("b", "s2", ""), ("c", "s1", "")]
    records = [SimpleNamespace(concept=c, style=s, tone=t) for c, s, t in rows]
    features = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.6, 0.8], [0.8, 0.6], [0.75, 0.66], [0.7071, 0.7071]])
    gallery = emoji_styles.StylesGallery(SimpleNamespace(records=records, concepts={}), features, ["train"] * 6)
    assert gallery.stand_ins({"a", "b", "c"}, "train") == [0, 2, 3, 4]
    assert gallery.own_drawing([0]).tolist() == [[True, True, False, False, False, False]]
    ceiling = emoji_styles.real_new_drawings(gallery, {"a", "b", "c"})
    assert ceiling == {"top1": 0.25, "top5": 1.0, "n": 4, "top5_by_style": {"s1": 1.0, "s2": 1.0}}
    assert emoji_styles.concept_ranks(features[[0, 2, 3, 4]], ["a", "a", "b", "b"], features, gallery.concepts,
                                      exclude=gallery.own_drawing([0, 2, 3, 4])).tolist() == [3, 3, 1, 2]
    assert gallery.stand_ins({"a"}, "validation") == []
    # Only c (one drawing): nothing to stand in, so no ceiling rather than an error.
    assert emoji_styles.real_new_drawings(gallery, {"c"}) == {"top1": None, "top5": None, "n": 0, "top5_by_style": {}}


def test_one_style_has_no_adherence_ceiling(corpus, tmp_path):
    # With one style every concept has one drawing: the eval runs and says why the ceiling is missing.
    model = tiny_text_model(tmp_path / "model", 8)
    result = runner.evaluate(settings_for(model, styles=("noto",), metrics=("adherence",)),
                             embedder=PooledColour(), cache_dir=tmp_path / "f")
    assert result["metrics"]["adherence"]["real_new_drawings"]["n"] == 0
    assert "n/a: no concept has a second drawing" in format_table(result)


# ------------------------------------------------------------------------------------ a fake corpus


CONCEPT_COUNT = 80


def fake_corpus(root: Path) -> Path:
    """A prepared emoji-styles folder: 80 concepts x 6 styles (concept 7 also in two tones), 8 px
    PNGs; each concept has its own colour, each style a marker of its own in one corner."""
    folder = root / "emoji-styles"
    rng = np.random.default_rng(0)
    concepts, records = {}, []
    for number in range(CONCEPT_COUNT):
        concept = f"1F{number + 0x400:03X}"
        tones = ["", "1F3FB", "1F3FD"] if number == 7 else [""]
        concepts[concept] = {"name": f"thing {number}", "keywords": [f"word {number}", "thing"],
                             "category": "objects", "subcategory": "tool", "tones": tones}
        colour = rng.integers(40, 216, 3)
        for s, style in enumerate(STYLES):
            for t, tone in enumerate(tones):
                pixels = np.empty((8, 8, 3), np.uint8)
                pixels[:] = colour
                pixels[:2, :2] = (255 - 30 * t) if s < 3 else 0
                pixels[(s % 3) * 3:(s % 3) * 3 + 2, 6:] = 255 if s < 3 else 10
                file = f"img/{style}/{concept}{'_' + tone if tone else ''}.png"
                (folder / file).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(folder / file)
                records.append({"concept": concept, "file": file, "source": "test", "style": style, "tone": tone})
    (folder / "concepts.json").write_text(json.dumps(concepts))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = {"dataset": "emoji-styles", "styles": {s: {"licence": "test"} for s in STYLES}}
    (folder / "prepared.json").write_text(json.dumps(manifest))
    return folder


class PooledColour(nn.Module):
    """Stand-in embedder: 4x4 average-pooled RGB (48-d), cacheable by name."""

    name = "test-pooled-colour-4x4"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images.float(), 4).flatten(1)


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LDM_DATA_DIR", str(tmp_path / "data"))
    return fake_corpus(tmp_path / "data")


def settings_for(model: Path, **overrides) -> runner.EvalSettings:
    values = {"model": str(model), "data": "emoji-styles", "steps": 2, "sampler": "ddim", "batch_size": 8,
              "adherence_prompts": 6, "memorization_samples": 12, "diversity_prompts": 3, "diversity_seeds": 3,
              "metrics": ("adherence", "composition", "memorization", "diversity")}
    return runner.EvalSettings(**(values | overrides))


def test_splits_of_the_fake_corpus(corpus):
    gallery = build_dataset("emoji-styles", "all", 8, caption_mode="full")
    splits = [gallery.split_of(i) for i in range(len(gallery))]
    assert {"train", "validation", "composition"} <= set(splits)
    held = {(gallery.records[i].concept, gallery.records[i].style) for i, s in enumerate(splits) if s == "composition"}
    trained = {(gallery.records[i].concept, gallery.records[i].style) for i, s in enumerate(splits) if s == "train"}
    assert not held & trained and all(any(c == concept for c, _ in trained) for concept, _ in held)


def copying_sampler(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Replace generation by a model that returns the training picture its prompt describes: the
    name-and-style caption gives that picture, a bare name the concept's first-style picture, and a
    held-out pair the (real) held-out picture, so every answer is known."""
    gallery = build_dataset("emoji-styles", "all", 8, caption_mode="full")
    lookup: dict[str, torch.Tensor] = {}
    for i in range(len(gallery)):
        r = gallery.records[i]
        meta = gallery.concepts[r.concept]
        image = gallery[i]["image"]
        if not r.tone:
            lookup[f"{meta['name']}, {captions.style_phrase(r.style)}"] = image
            lookup.setdefault(meta["name"], image)
        lookup[captions.caption_variants(meta, r.tone, r.style, with_style=True)[1]] = image

    def sample(components, prompts, settings, stream, progress):
        return torch.stack([lookup.get(p, torch.zeros(3, 8, 8)) for p in prompts])

    monkeypatch.setattr(emoji_styles, "sample", sample)
    return lookup


def test_a_copying_model_is_caught_and_composes_perfectly(corpus, tmp_path, monkeypatch):
    copying_sampler(monkeypatch)
    model = tiny_text_model(tmp_path / "model", 8)
    result = runner.evaluate(settings_for(model), embedder=PooledColour(), perceptual=pixel_distance,
                             cache_dir=tmp_path / "features")
    m = result["metrics"]
    assert m["memorization"]["samples"]["copy_share"] == 1.0 and m["memorization"]["samples"]["n"] == 12
    assert m["memorization"]["samples"]["ratio_median"] == 0.0
    assert m["memorization"]["real_validation"]["n"] > 0 and m["memorization"]["real_composition"]["copy_share"] < 1
    assert m["diversity"]["pixel"]["samples"] == 0.0 and m["diversity"]["pixel"]["real_styles"] > 10
    assert m["diversity"]["perceptual"] == m["diversity"]["pixel"]  # the injected distance is the pixel one
    comp = m["composition"]
    assert comp["heldout_pairs"]["top1"] == 1.0 and comp["seen_pairs"]["top1"] == 1.0
    assert comp["style_probe_validation_accuracy"] == 1.0 and comp["heldout_pairs"]["style_accuracy"] == 1.0
    assert comp["chance_top1"] == pytest.approx(1 / CONCEPT_COUNT) and comp["chance_style"] == pytest.approx(1 / 6)
    assert comp["heldout_pairs"]["examples"][0].endswith(" style")
    # Copies of training pictures retrieve their concept first, whatever the wording.
    assert m["adherence"]["training_prompts"]["top1"] == 1.0
    # Per-prompt records, for paired comparisons of two evaluations (scripts/compare_evals.py).
    for section in (m["adherence"]["training_prompts"], m["adherence"]["heldout_prompts"]):
        assert len(section["ranks"]) == section["n"] and min(section["ranks"]) >= 1
        assert sum(r <= 5 for r in section["ranks"]) / section["n"] == section["top5"]
    assert comp["heldout_pairs"]["ranks"] == [1] * comp["heldout_pairs"]["n"]
    assert comp["heldout_pairs"]["style_right"] == [True] * comp["heldout_pairs"]["n"]
    # The ceilings: real drawings without their own drawing in the gallery, one per (concept, style).
    # (Their values are pinned by hand in test_real_drawings_are_ranked_without_their_own_drawing.)
    ceiling = m["adherence"]["real_new_drawings"]
    assert ceiling["n"] == 6 * len(STYLES) and set(ceiling["top5_by_style"]) == set(STYLES)
    assert 0 <= ceiling["top1"] <= ceiling["top5"] <= 1
    real = comp["real_heldout_pairs"]
    assert real["n"] == comp["num_pairs"] and 0 <= real["top1"] <= real["top5"] <= 1
    assert real["style_accuracy"] == 1.0  # the probe reads the corner markers
    table = format_table(result)
    for heading in ("composition (", "memorization (", "seed diversity (", "adherence ("):
        assert heading in table


def test_real_tiny_model_end_to_end_and_deterministic(corpus, tmp_path, monkeypatch, capsys):
    model = tiny_text_model(tmp_path / "model", 8)
    monkeypatch.setattr(emoji_styles, "EfficientNetLiteEmbedder", PooledColour)
    monkeypatch.setattr(runner, "default_extractor", lambda device: PooledColour())
    args = ["eval", str(model), "--data", "emoji-styles", "--steps", "2", "--sampler", "ddim", "--no-progress",
            "--no-perceptual", "--adherence-prompts", "4", "--memorization-samples", "8", "--diversity-prompts", "2",
            "--diversity-seeds", "2", "--num-samples", "8", "--batch-size", "8", "--cache-dir", str(tmp_path / "f")]
    outputs = []
    for name in ("a.json", "b.json"):
        assert ldm(args + ["-o", str(tmp_path / name)]) == 0
        outputs.append(json.loads((tmp_path / name).read_text()))
    m = outputs[0]["metrics"]
    assert set(m) == {"generation", "adherence", "composition", "memorization", "diversity"}  # the default
    assert m == outputs[1]["metrics"]
    assert "perceptual" not in m["diversity"] and m["diversity"]["pixel"]["samples"] > 0  # seeds differ
    assert 0 <= m["composition"]["heldout_pairs"]["top1"] <= m["composition"]["heldout_pairs"]["top5"] <= 1
    assert "seed diversity" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    ({"data": "emoji", "metrics": ("composition",)}, "needs a text-to-image model .* data='emoji-styles'"),
    ({"diversity_seeds": 1}, "diversity_seeds=1 must be >= 2"),
    ({"styles": ("noto", "watercolour")}, "unknown emoji style 'watercolour'"),
    ({"split": "composition", "data": "emoji"}, "split"),
])
def test_bad_settings_name_the_problem(corpus, tmp_path, overrides, message):
    model = tiny_text_model(tmp_path / "model", 8)
    with pytest.raises(ValueError, match=message):
        runner.evaluate(settings_for(model, **overrides), embedder=PooledColour(), cache_dir=tmp_path / "f")
