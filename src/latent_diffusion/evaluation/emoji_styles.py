"""Generalization of emoji-styles text-to-image models: adherence, composition, memorization, diversity.

The gallery is every prepared emoji-styles picture (train, validation and composition splits, the
styles evaluated, all skin tones) at the model's resolution, embedded once by EfficientNet-Lite0
(pooled, unit-norm; cached on disk). Every group draws its prompts with a fixed seed
(:data:`~latent_diffusion.evaluation.prompts.PROMPT_SET_SEED`), so models are scored on the same
prompts; the sampling seed changes only the noise.

* **adherence** (``adherence``): as for ``emoji`` (:mod:`~latent_diffusion.evaluation.prompts`):
  ``adherence_prompts`` train concepts with an unambiguous name, asked by their name (a wording the
  caption sampler trains on) and by a held-out rewording that no caption of the corpus uses; a
  hit at k when a picture of the concept, in any style or tone, is among the k gallery pictures
  nearest the sample. Beside it, its ceiling (``real_new_drawings``): the corpus's own training
  drawings of the same concepts scored the same way with their own drawing (all its tones) taken
  out of the gallery, as a new drawing would be found. A model that copies can beat it; one that
  draws each concept as well as another of the corpus's artists scores it.
* **composition** (``composition``): every held-out (concept, style) pair of the composition split
  (the concept was trained in other styles, the style on other concepts) is asked as "NAME, STYLE
  style"; so is a *seen* pair of each of those concepts (a style it was trained in, drawn with the
  seed), the control. Reported for both: concept retrieval top-1/top-5 over all concepts (each
  concept ranked by its most similar gallery picture) and the share of samples a style probe puts
  in the asked style. The probe is a linear classifier on the same features, fit on the training
  pictures; its accuracy on the real validation pictures (concepts it never saw) is reported beside
  it, the ceiling the samples can be read against. The held-out pairs' real pictures, each scored
  without its own drawing (``real_heldout_pairs``), are the ceiling of all three figures.
* **memorization** (``memorization``): ``memorization_samples`` training pictures drawn with the
  seed are asked by a training caption ("NAME[, TONE], STYLE style"); each sample's ratio of the
  distance to its nearest training picture to the distance to the nearest training picture of
  another drawing (another concept or style, so the tones of one drawing count as one), the
  criterion of Gu et al. (TMLR 2025): under 1/3 is a copy. The same figure for the real validation
  and composition pictures (drawings the training set does not hold) is the baseline.
* **diversity** (``diversity``): ``diversity_prompts`` train concepts drawn in at least
  ``MIN_DIVERSITY_STYLES`` styles, each asked by its bare name ``diversity_seeds`` times with other
  noise; the mean pairwise perceptual distance (and mean absolute difference in grey levels) among
  a prompt's samples, beside the same among the real styles of the concept (base tone). A model
  that draws one picture per name scores 0; one that draws as varied as the corpus scores as the
  real styles do.

Where they mislead.

* All groups rest on an ImageNet network's features, not on a judge of emoji: look-alike concepts
  (smileys, clocks, flags, hand gestures) are confused, and a valid new drawing may retrieve
  nothing. The composition control tells a hard concept from a failed composition.
* The style probe reads texture and shading; a blurry sample may look "flat" or "3d" to it
  whatever was asked. Its validation accuracy bounds what its verdict on samples is worth.
* A ratio above 1/3 is not proof of novelty: a sample can copy a drawing's layout in another
  colour. The copy share counts near-exact copies only.
* Diversity rewards noise as much as variety: a model drawing garbage scores high. Read it with
  adherence and FID, never alone.
* ~90 composition pairs and 100 prompts give standard errors up to 0.05.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from latent_diffusion.data.emoji_styles.captions import caption_variants, style_phrase
from latent_diffusion.data.emoji_styles.dataset import EmojiStylesDataset
from latent_diffusion.data.emoji_styles.styles import STYLES
from latent_diffusion.evaluation.adherence import EfficientNetLiteEmbedder, check_exclusion, embed, retrieval_ranks
from latent_diffusion.evaluation.data import build_eval_dataset, cache_name
from latent_diffusion.evaluation.generalization import (
    COPY_RATIO,
    Distance,
    LinearProbe,
    copy_share,
    mean_pairwise_distance,
    neighbour_ratios,
    pixel_distance,
)
from latent_diffusion.evaluation.generation import Conditions, generate_images
from latent_diffusion.evaluation.prompts import (
    PROMPT_SET_SEED,
    build_prompt_sets,
    gallery_embeddings,
    score_prompt_sets,
)
from latent_diffusion.evaluation.settings import EvalSettings

if TYPE_CHECKING:
    from latent_diffusion.model.components import DiffusionComponents

Embedder = Callable[[torch.Tensor], torch.Tensor]
GROUPS = ("adherence", "composition", "memorization", "diversity")
MIN_DIVERSITY_STYLES = 4


@dataclass
class StylesGallery:
    """Every picture of the corpus with its embedding, concept, style and split."""

    dataset: EmojiStylesDataset
    features: torch.Tensor
    splits: list[str]

    @property
    def concepts(self) -> list[str]:
        """The concept of each gallery row."""
        return [r.concept for r in self.dataset.records]

    def rows(self, split: str) -> list[int]:
        """The gallery rows of one split."""
        return [i for i, s in enumerate(self.splits) if s == split]

    def name(self, concept: str) -> str:
        """The CLDR name of a concept."""
        return self.dataset.concepts[concept]["name"]

    def drawing(self, row: int) -> str:
        """One id per drawing: concept and style, whatever the tone."""
        r = self.dataset.records[row]
        return f"{r.concept}/{r.style}"

    def own_drawing(self, rows: list[int]) -> torch.Tensor:
        """Bool ``[len(rows), G]``: the gallery rows of each row's drawing (all its tones), which a real
        picture standing in for a sample must not retrieve."""
        drawings = [self.drawing(i) for i in range(len(self.splits))]
        codes = {d: c for c, d in enumerate(dict.fromkeys(drawings))}
        of_row = torch.tensor([codes[d] for d in drawings])
        return of_row.unsqueeze(0) == of_row[rows].unsqueeze(1)

    def stand_ins(self, concepts: set[str], split: str) -> list[int]:
        """One row per drawing of ``concepts`` in ``split`` (its base tone where it has one), for the
        drawings whose concept has another drawing in the gallery to be retrieved by."""
        drawings_of: dict[str, set[str]] = defaultdict(set)
        for i, concept in enumerate(self.concepts):
            drawings_of[concept].add(self.drawing(i))
        chosen: dict[str, int] = {}
        records = self.dataset.records
        for i in self.rows(split):
            if records[i].concept not in concepts or len(drawings_of[records[i].concept]) < 2:
                continue
            kept = chosen.get(self.drawing(i))
            if kept is None or (records[kept].tone and not records[i].tone):
                chosen[self.drawing(i)] = i
        return sorted(chosen.values())


def load_gallery(settings: EvalSettings, channels: int, embedder: Embedder, cache_dir: str | Path | None,
                 progress: bool) -> StylesGallery:
    """The gallery of the evaluated styles (all tones), embedded (cached when the embedder has a name)."""
    styles = settings.styles or STYLES
    dataset = build_eval_dataset(settings, channels, split="all", styles=styles, skin_tones=True,
                                 caption_mode="full")
    what = "gallery-" + "+".join(styles)
    features = gallery_embeddings(dataset, embedder, cache_name(settings, channels, what), settings.batch_size,
                                  cache_dir, progress)
    return StylesGallery(dataset, features, [dataset.split_of(i) for i in range(len(dataset))])


def candidate_concepts(gallery: StylesGallery) -> dict[str, str]:
    """Concept -> name of the train concepts whose name no other concept has (sorted by concept)."""
    concepts_by_name: dict[str, set[str]] = defaultdict(set)
    for concept, meta in gallery.dataset.concepts.items():
        concepts_by_name[meta["name"]].add(concept)
    train = {gallery.dataset.records[i].concept for i in gallery.rows("train")}
    return {c: gallery.name(c) for c in sorted(train) if len(concepts_by_name[gallery.name(c)]) == 1}


def training_captions(gallery: StylesGallery) -> set[str]:
    """Every fixed caption variant of every training picture, with and without the style phrase."""
    captions: set[str] = set()
    for i in gallery.rows("train"):
        r = gallery.dataset.records[i]
        meta = gallery.dataset.concepts[r.concept]
        captions.update(caption_variants(meta, r.tone, r.style, with_style=False))
        captions.update(caption_variants(meta, r.tone, r.style, with_style=True))
    return captions


def sample(components: DiffusionComponents, prompts: list[str], settings: EvalSettings, stream: str,
           progress: bool) -> torch.Tensor:
    """One image per prompt (noise stream ``stream``)."""
    return generate_images(components, Conditions(prompts=prompts), len(prompts), sampler=settings.sampler,
                           steps=settings.steps, guidance=settings.guidance or 1.0, seed=settings.seed,
                           batch_size=settings.batch_size, spacing=settings.spacing, stream=stream,
                           progress=progress)


# ------------------------------------------------------------------------------------ the groups


def adherence(components: DiffusionComponents, gallery: StylesGallery, settings: EvalSettings, embedder: Embedder,
              progress: bool) -> dict[str, Any]:
    """Top-1/top-5 retrieval of training and held-out wordings (see the module docstring)."""
    prompts = build_prompt_sets(candidate_concepts(gallery), training_captions(gallery), settings.adherence_prompts,
                                PROMPT_SET_SEED)
    result = {"num_emoji": settings.adherence_prompts, "gallery_size": len(gallery.splits),
              "embedder": getattr(embedder, "name", type(embedder).__name__)}
    result |= score_prompt_sets(prompts, lambda texts, stream: sample(components, texts, settings, stream, progress),
                                embedder, gallery.features, gallery.concepts, settings.batch_size)
    return result | {"real_new_drawings": real_new_drawings(gallery, set(prompts.training.target_ids))}


def real_new_drawings(gallery: StylesGallery, concepts: set[str]) -> dict[str, Any]:
    """The adherence of the corpus's own drawings of ``concepts`` read as new drawings: each training
    drawing (one picture, base tone) ranked against the gallery without that drawing, as a sample
    would be. What a model that drew each concept as well as another of the corpus's artists would
    score: the ceiling to read the samples' figures against. Per style too (some styles are near
    copies of each other and find their concept easily; others find it rarely)."""
    rows = gallery.stand_ins(concepts, "train")
    if not rows:  # one style only: no concept has another drawing to be found by
        return {"top1": None, "top5": None, "n": 0, "top5_by_style": {}}
    scores = retrieval_ranks(gallery.features[rows], [gallery.concepts[i] for i in rows], gallery.features,
                             gallery.concepts, exclude=gallery.own_drawing(rows))
    by_style: dict[str, list[int]] = defaultdict(list)
    for row, rank in zip(rows, scores.ranks):
        by_style[gallery.dataset.records[row].style].append(rank)
    return {"top1": scores.top1, "top5": scores.top5, "n": scores.n,
            "top5_by_style": {style: float(np.mean(np.array(ranks) <= 5)) for style, ranks in sorted(by_style.items())}}


def real_heldout_pairs(gallery: StylesGallery, rows: list[int], probe: LinearProbe) -> dict[str, Any]:
    """The composition figures of the held-out pairs' real pictures (``rows``), each ranked without
    its own drawing: the ceiling of the samples' concept ranks and style score."""
    if not rows:
        return {"top1": None, "top5": None, "style_accuracy": None, "n": 0}
    ranks = concept_ranks(gallery.features[rows], [gallery.concepts[i] for i in rows], gallery.features,
                          gallery.concepts, exclude=gallery.own_drawing(rows))
    styles = [gallery.dataset.records[i].style for i in rows]
    return {"top1": float((ranks <= 1).double().mean()), "top5": float((ranks <= 5).double().mean()),
            "style_accuracy": probe.accuracy(gallery.features[rows], styles), "n": len(rows)}


def concept_ranks(queries: torch.Tensor, targets: list[str], gallery: torch.Tensor,
                  gallery_ids: list[str], exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each query's target among all ids, each id scored by its most similar gallery row
    (cosine); ties count against the query. ``exclude``: as for
    :func:`~latent_diffusion.evaluation.adherence.retrieval_ranks`, rows a query may not see."""
    check_exclusion(exclude, len(queries), len(gallery_ids))
    codes = {identity: code for code, identity in enumerate(dict.fromkeys(gallery_ids))}
    similarity = F.normalize(queries.double(), dim=1) @ F.normalize(gallery.double(), dim=1).T
    if exclude is not None:
        similarity = similarity.masked_fill(exclude, -torch.inf)
    index = torch.tensor([codes[g] for g in gallery_ids]).expand_as(similarity)
    best = torch.full((len(queries), len(codes)), -torch.inf, dtype=torch.float64)
    best = best.scatter_reduce(1, index, similarity, reduce="amax")
    target = torch.tensor([codes[t] for t in targets])
    right = best.gather(1, target.unsqueeze(1))
    if torch.isneginf(right).any():
        raise ValueError("exclude hides every gallery row of some query's target, which could then never be "
                         "ranked; leave each query a picture of its target")
    return (best >= right).sum(dim=1)  # the target itself counts once: rank 1 when nothing ties or beats it


def composition(components: DiffusionComponents, gallery: StylesGallery, settings: EvalSettings, embedder: Embedder,
                progress: bool) -> dict[str, Any]:
    """Concept retrieval and style accuracy on held-out (concept, style) pairs and a seen control."""
    train = gallery.rows("train")
    records = gallery.dataset.records
    probe = LinearProbe.fit(gallery.features[train], [records[i].style for i in train])
    validation = gallery.rows("validation")
    probe_accuracy = (probe.accuracy(gallery.features[validation], [records[i].style for i in validation])
                      if validation else None)
    trained_styles: dict[str, set[str]] = defaultdict(set)
    for i in train:
        trained_styles[records[i].concept].add(records[i].style)
    held = sorted({(records[i].concept, records[i].style) for i in gallery.rows("composition")})
    if not held:
        raise ValueError("the composition split of the evaluated styles is empty; evaluate more styles")
    rng = np.random.RandomState(PROMPT_SET_SEED)
    seen = [(concept, sorted(trained_styles[concept])[rng.randint(len(trained_styles[concept]))])
            for concept, _ in held]
    result: dict[str, Any] = {"num_pairs": len(held), "num_concepts": len(set(gallery.concepts)),
                              "style_probe_validation_accuracy": probe_accuracy,
                              "embedder": getattr(embedder, "name", type(embedder).__name__)}
    for label, pairs in (("heldout_pairs", held), ("seen_pairs", seen)):
        prompts = [f"{gallery.name(concept)}, {style_phrase(style)}" for concept, style in pairs]
        queries = embed(embedder, sample(components, prompts, settings, f"composition-{label}", progress),
                        settings.batch_size)
        ranks = concept_ranks(queries, [c for c, _ in pairs], gallery.features, gallery.concepts)
        styles = probe.predict(queries)
        style_right = [bool(p == s) for p, (_, s) in zip(styles, pairs)]
        result[label] = {"top1": float((ranks <= 1).double().mean()), "top5": float((ranks <= 5).double().mean()),
                         "style_accuracy": sum(style_right) / len(pairs), "n": len(pairs), "examples": prompts[:3],
                         # pair by pair, for paired comparisons of two evaluations (evaluation/paired.py)
                         "ranks": [int(r) for r in ranks], "style_right": style_right}
    # The held-out pairs' real pictures, each without its own drawing: the ceiling of the figures above.
    rows = gallery.stand_ins({concept for concept, _ in held}, "composition")
    result["real_heldout_pairs"] = real_heldout_pairs(gallery, rows, probe)
    result["chance_top1"] = 1 / result["num_concepts"]
    result["chance_top5"] = min(5, result["num_concepts"]) / result["num_concepts"]
    result["chance_style"] = 1 / len(probe.classes)
    return result


def _ratio_summary(ratios: torch.Tensor) -> dict[str, Any]:
    quantiles = torch.quantile(ratios, torch.tensor([0.1, 0.5], dtype=ratios.dtype)).tolist()
    return {"copy_share": copy_share(ratios), "ratio_p10": quantiles[0], "ratio_median": quantiles[1],
            "n": int(ratios.numel())}


def memorization(components: DiffusionComponents, gallery: StylesGallery, settings: EvalSettings,
                 embedder: Embedder, progress: bool) -> dict[str, Any]:
    """Share of samples that copy a training picture, beside the same share for real unseen pictures."""
    train = gallery.rows("train")
    references = gallery.features[train]
    groups = [gallery.drawing(i) for i in train]
    drawn = np.random.RandomState(PROMPT_SET_SEED).choice(len(train), size=min(settings.memorization_samples,
                                                                               len(train)), replace=False)
    records = gallery.dataset.records
    prompts = []
    for row in (train[i] for i in sorted(drawn.tolist())):
        r = records[row]
        prompts.append(caption_variants(gallery.dataset.concepts[r.concept], r.tone, r.style, with_style=True)[1])
    queries = embed(embedder, sample(components, prompts, settings, "memorization", progress), settings.batch_size)
    found = neighbour_ratios(queries, references, groups)
    result: dict[str, Any] = {"threshold": COPY_RATIO, "samples": _ratio_summary(found.ratio),
                              "examples": prompts[:3], "num_training_pictures": len(train)}
    for split in ("validation", "composition"):
        rows = gallery.rows(split)
        if rows:
            result[f"real_{split}"] = _ratio_summary(neighbour_ratios(gallery.features[rows], references,
                                                                      groups).ratio)
    return result


def diversity(components: DiffusionComponents, gallery: StylesGallery, settings: EvalSettings,
              perceptual: Distance | None, progress: bool) -> dict[str, Any]:
    """Mean pairwise distance among the seeds of a prompt and among the real styles of its concept."""
    records = gallery.dataset.records
    base_rows: dict[str, list[int]] = defaultdict(list)
    for i in gallery.rows("train"):
        if not records[i].tone:
            base_rows[records[i].concept].append(i)
    eligible = [c for c in candidate_concepts(gallery) if len(base_rows[c]) >= MIN_DIVERSITY_STYLES]
    if not eligible:
        raise ValueError(f"no train concept is drawn in {MIN_DIVERSITY_STYLES} or more of the evaluated styles; "
                         "seed diversity needs them (evaluate more styles)")
    count = min(settings.diversity_prompts, len(eligible))
    concepts = sorted(np.random.RandomState(PROMPT_SET_SEED).choice(eligible, size=count, replace=False).tolist())
    seeds = settings.diversity_seeds
    prompts = [gallery.name(c) for c in concepts for _ in range(seeds)]
    images = sample(components, prompts, settings, "diversity", progress).split(seeds)
    distances = {"pixel": pixel_distance} | ({"perceptual": perceptual} if perceptual is not None else {})
    real_styles = [torch.stack([gallery.dataset[i]["image"] for i in base_rows[c]]) for c in concepts]  # read once
    result: dict[str, Any] = {"num_prompts": count, "seeds": seeds, "examples": prompts[::seeds][:3]}
    for name, distance in distances.items():
        generated = [mean_pairwise_distance(group, distance) for group in images]
        real = [mean_pairwise_distance(pictures, distance) for pictures in real_styles]
        result[name] = {"samples": float(np.mean(generated)), "real_styles": float(np.mean(real))}
    result["pixel_unit"] = "mean |difference| in grey levels of 0-255"
    return result


def styles_generalization(components: DiffusionComponents, settings: EvalSettings, groups: tuple[str, ...], *,
                          embedder: Embedder | None = None, perceptual: Distance | None = None,
                          cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """The results of the ``groups`` asked (any of :data:`GROUPS`), keyed by group.

    ``embedder`` defaults to EfficientNet-Lite0; ``perceptual`` is the diversity's perceptual
    distance (None: grey-level distance only)."""
    device = next(components.unet.parameters()).device
    if embedder is None:
        embedder = EfficientNetLiteEmbedder().to(device)
    gallery = load_gallery(settings, components.autoencoder.config.in_channels, embedder, cache_dir, progress)
    results: dict[str, Any] = {}
    if "adherence" in groups:
        results["adherence"] = adherence(components, gallery, settings, embedder, progress)
    if "composition" in groups:
        results["composition"] = composition(components, gallery, settings, embedder, progress)
    if "memorization" in groups:
        results["memorization"] = memorization(components, gallery, settings, embedder, progress)
    if "diversity" in groups:
        results["diversity"] = diversity(components, gallery, settings, perceptual, progress)
    return results


__all__ = ["GROUPS", "MIN_DIVERSITY_STYLES", "StylesGallery", "candidate_concepts", "concept_ranks",
           "load_gallery", "styles_generalization", "training_captions"]
