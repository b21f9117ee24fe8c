"""Prompt adherence of emoji text-to-image models: fixed prompt sets, a gallery, retrieval scores.

How it works.

1. Prompt sets. From the TRAIN split, ``count`` base emoji (default 100) are drawn with a fixed
   seed (:data:`PROMPT_SET_SEED`, whatever the sampling seed) among those whose name is
   unambiguous (no other base emoji has the same name) and that are pictures of something (the
   "Component" category - skin-tone swatches and hair pieces - is left out). Each gets two
   prompts:

   * a *training prompt*: its name exactly as in the caption variants ("grinning face", the
     name-only variant the default text-to-image config trains on with ``caption_mode: random``);
   * a *held-out prompt*: the name reworded with a template never used by the captions
     (:data:`HELDOUT_TEMPLATES`, e.g. "an emoji of a grinning face", "a grinning face icon"),
     chosen per emoji with the same seed. Every held-out prompt is checked against every caption
     variant of every training item (with and without the style phrase); a collision moves to the
     next template. So held-out prompts test whether the text encoder generalizes to new wording
     of known subjects, not memorized strings.

2. One image per prompt is generated (seeded; the two sets use different noise streams).

3. Gallery: every emoji picture, train + validation, both styles, all skin tones, at the model's
   resolution, each labelled with its base code (``EmojiRecord.base``: one id for all tones and
   styles of an emoji). Generated images and gallery are embedded by the default embedder
   (EfficientNet-Lite0 pooled features); the gallery embeddings are cached on disk.

4. A generated image is a hit at k when an image of the prompt's emoji is among the k gallery
   images most similar to it (:func:`~latent_diffusion.evaluation.adherence.retrieval_ranks`;
   ties count against it). Top-1 and top-5 are reported for both sets with their chance levels.

Where it misleads.

* It rewards resemblance to the dataset's drawings, not agreement with the text: copying the
  training image of the emoji scores perfectly, a valid new drawing of "a mouse face" may miss.
* Look-alike emoji (smiley variants, clock faces, flags with similar stripes, hand gestures) are
  confused by the embedder, which was trained on ImageNet photos, not on emoji; a miss may be
  a good image of a near neighbour. Compare models only with the same gallery and embedder.
* Skin tones and styles are all one id, so the tone or style asked for is not checked.
* Templates add articles mechanically ("a crossed swords icon"); awkward grammar on plural
  names makes the held-out set slightly harder than intended.
* With 100 prompts a score has a standard error up to 0.05; differences of a few points are noise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from latent_diffusion.data.emoji import EmojiDataset, emoji_caption_variants
from latent_diffusion.evaluation.adherence import EfficientNetLiteEmbedder, embed, retrieval_ranks
from latent_diffusion.evaluation.data import build_eval_dataset, cache_name, image_batches, progress_bar
from latent_diffusion.evaluation.features_cache import cached_dataset_features, extract_features
from latent_diffusion.evaluation.generation import Conditions, generate_images
from latent_diffusion.evaluation.settings import EvalSettings

if TYPE_CHECKING:
    from latent_diffusion.model.components import DiffusionComponents

# The drawn emoji are the same for every evaluation (the sampling seed only changes the noise), so
# adherence scores of different models and seeds are measured on the same prompts.
PROMPT_SET_SEED = 0
HELDOUT_TEMPLATES = (
    "an emoji of {article} {name}",
    "{article} {name} icon",
    "a simple drawing of {article} {name}",
    "{article} {name}, emoji style",
)
EXCLUDED_CATEGORIES = ("component",)


@dataclass
class PromptSet:
    """Prompts with the base emoji code each one asks for."""

    name: str
    prompts: list[str]
    target_ids: list[str]


@dataclass
class AdherencePrompts:
    """The two prompt sets over the same drawn emoji; ``rerouted`` counts template collisions avoided."""

    training: PromptSet
    heldout: PromptSet
    rerouted: int


def article(name: str) -> str:
    """"an" before a vowel letter, else "a" (spelling, not sound: "a unicorn face" reads "an")."""
    return "an" if name[:1] in "aeiou" else "a"


def training_caption_variants(dataset: EmojiDataset) -> set[str]:
    """Every caption variant of every item of ``dataset``, with and without the style phrase."""
    variants: set[str] = set()
    for record in dataset.records:
        variants.update(emoji_caption_variants(record, with_style=False))
        variants.update(emoji_caption_variants(record, with_style=True))
    return variants


def candidate_emoji(train: EmojiDataset, gallery: EmojiDataset) -> dict[str, str]:
    """Base code -> name of the train emoji that can be asked for unambiguously (sorted by code)."""
    bases_by_name: dict[str, set[str]] = defaultdict(set)
    for record in gallery.records:
        bases_by_name[record.name].add(record.base)
    names = {}
    for record in train.records:
        if record.unified == record.base and record.category not in EXCLUDED_CATEGORIES \
                and len(bases_by_name[record.name]) == 1:
            names[record.base] = record.name
    return dict(sorted(names.items()))


def heldout_prompt(name: str, first: int, forbidden: set[str]) -> tuple[str, int]:
    """The first template from index ``first`` (cyclically) whose prompt is not in ``forbidden``,
    with the number of templates skipped."""
    for skipped in range(len(HELDOUT_TEMPLATES)):
        template = HELDOUT_TEMPLATES[(first + skipped) % len(HELDOUT_TEMPLATES)]
        prompt = template.format(article=article(name), name=name)
        if prompt not in forbidden:
            return prompt, skipped
    raise ValueError(f"every held-out template for {name!r} is a training caption; add a template")


def build_adherence_prompts(train: EmojiDataset, gallery: EmojiDataset, count: int = 100,
                            seed: int = 0) -> AdherencePrompts:
    """Draw ``count`` base emoji of the train split (seeded) and build both prompt sets."""
    return build_prompt_sets(candidate_emoji(train, gallery), training_caption_variants(train), count, seed)


def build_prompt_sets(candidates: dict[str, str], forbidden: set[str], count: int = 100,
                      seed: int = 0) -> AdherencePrompts:
    """Draw ``count`` of the ``candidates`` (id -> name; seeded) and build both prompt sets: the name,
    and a held-out rewording that is none of the ``forbidden`` training captions."""
    if count < 1:
        raise ValueError(f"count={count!r} must be >= 1")
    if count > len(candidates):
        raise ValueError(f"count={count} exceeds the {len(candidates)} unambiguous subjects of the train split")
    rng = np.random.RandomState(seed)
    codes = sorted(rng.choice(sorted(candidates), size=count, replace=False).tolist())
    firsts = rng.randint(len(HELDOUT_TEMPLATES), size=count).tolist()
    heldout, rerouted = [], 0
    for code, first in zip(codes, firsts):
        prompt, skipped = heldout_prompt(candidates[code], first, forbidden)
        heldout.append(prompt)
        rerouted += skipped
    names = [candidates[code] for code in codes]
    return AdherencePrompts(training=PromptSet("training", names, codes),
                            heldout=PromptSet("heldout", heldout, list(codes)), rerouted=rerouted)


def gallery_embeddings(gallery: EmojiDataset, embedder: Callable[[torch.Tensor], torch.Tensor], identity: str,
                       batch_size: int, cache_dir: str | Path | None, progress: bool) -> torch.Tensor:
    """Embeddings ``[G, D]`` of every gallery image (cached when the embedder has a ``name``)."""
    indices = list(range(len(gallery)))
    with progress_bar(len(indices), "gallery embeddings", progress) as bar:
        batches = image_batches(gallery, indices, batch_size, bar)
        if not isinstance(getattr(embedder, "name", None), str):
            return extract_features(embedder, batches)
        return cached_dataset_features(embedder, batches, dataset=identity, split="all",
                                       resolution=gallery.resolution, num_images=len(indices),
                                       cache_dir=cache_dir).features


def emoji_adherence(components: DiffusionComponents, settings: EvalSettings, *,
                    embedder: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    cache_dir: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Top-1/top-5 retrieval adherence of both prompt sets (see the module docstring)."""
    channels = components.autoencoder.config.in_channels
    # Adherence always uses both styles: prompts name an emoji, not a style.
    train = build_eval_dataset(settings, channels, split="train", styles=("google", "twitter"), skin_tones=True)
    gallery = build_eval_dataset(settings, channels, split="all", styles=("google", "twitter"), skin_tones=True)
    prompts = build_adherence_prompts(train, gallery, settings.adherence_prompts, PROMPT_SET_SEED)
    if embedder is None:
        embedder = EfficientNetLiteEmbedder().to(next(components.unet.parameters()).device)
    gallery_ids = [record.base for record in gallery.records]
    gallery_features = gallery_embeddings(gallery, embedder, cache_name(settings, channels, "gallery"),
                                          settings.batch_size, cache_dir, progress)
    result: dict[str, Any] = {"num_emoji": settings.adherence_prompts, "gallery_size": len(gallery),
                              "embedder": getattr(embedder, "name", type(embedder).__name__)}

    def generate(prompts: list[str], stream: str) -> torch.Tensor:
        return generate_images(components, Conditions(prompts=prompts), len(prompts), sampler=settings.sampler,
                               steps=settings.steps, guidance=settings.guidance or 1.0, seed=settings.seed,
                               batch_size=settings.batch_size, spacing=settings.spacing, stream=stream,
                               progress=progress)

    return result | score_prompt_sets(prompts, generate, embedder, gallery_features, gallery_ids, settings.batch_size)


def score_prompt_sets(prompts: AdherencePrompts, generate: Callable[[list[str], str], torch.Tensor],
                      embedder: Callable[[torch.Tensor], torch.Tensor], gallery_features: torch.Tensor,
                      gallery_ids: list[str], batch_size: int) -> dict[str, Any]:
    """Score both prompt sets: ``generate(prompts, stream)`` gives one image per prompt (each set its
    own noise stream), retrieved against the gallery."""
    result: dict[str, Any] = {"templates_rerouted": prompts.rerouted}
    for prompt_set in (prompts.training, prompts.heldout):
        images = generate(prompt_set.prompts, f"adherence-{prompt_set.name}")
        scores = retrieval_ranks(embed(embedder, images, batch_size), prompt_set.target_ids,
                                 gallery_features, gallery_ids)
        result[f"{prompt_set.name}_prompts"] = {
            "top1": scores.top1, "top5": scores.top5, "chance_top1": scores.chance_top1,
            "chance_top5": scores.chance_top5, "n": scores.n, "examples": prompt_set.prompts[:3],
            # prompt by prompt, so two evaluations can be compared pairwise (evaluation/paired.py)
            "ranks": scores.ranks}
    return result
