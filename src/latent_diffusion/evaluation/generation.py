"""Images generated for an evaluation: what each is conditioned on, and seeded noise streams that
never overlap, so equal settings give equal images."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latent_diffusion.conditioning.conditioner import TEXT_KINDS
from latent_diffusion.data.common import ImageCaptionDataset
from latent_diffusion.evaluation.data import progress_bar
from latent_diffusion.evaluation.features_cache import extract_features
from latent_diffusion.evaluation.settings import Extractor
from latent_diffusion.model.components import DiffusionComponents, decode_images
from latent_diffusion.model.reverse_process import sample_latents
from latent_diffusion.validation import check_positive


@dataclass
class Conditions:
    """What each generated image is conditioned on: prompts, class labels, or nothing."""

    prompts: list[str] | None = None
    labels: list[int] | None = None

    def batch(self, components: DiffusionComponents, start: int, stop: int) -> tuple[dict, dict | None]:
        """UNet kwargs (cond, uncond) of items ``start:stop`` (no unconditional input, so no
        guidance, for an unconditional model)."""
        inputs = self.prompts if self.prompts is not None else self.labels
        if inputs is None:
            return {}, None
        return components.conditioner.pair(inputs[start:stop])


def split_conditions(components: DiffusionComponents, dataset: ImageCaptionDataset,
                     indices: Sequence[int]) -> Conditions:
    """Captions (text models) or labels (class models) of ``dataset[indices]``; none if unconditional."""
    kind = components.conditioner.kind
    if kind in TEXT_KINDS:
        return Conditions(prompts=[dataset.caption(i) for i in indices])
    if kind == "class":
        classes = components.conditioner.config.num_classes
        names = dataset.class_names
        if names is None or len(names) != classes:
            raise ValueError(f"the model has {classes} classes but the dataset has "
                             f"{'no labels' if names is None else f'{len(names)} classes'}; evaluate it on "
                             "the dataset it was trained on")
        labels = [dataset.label(i) for i in indices]
        if min(labels) < 0:
            raise ValueError("some items of the split have no label (-1); a class model needs labelled items")
        return Conditions(labels=labels)
    return Conditions()


def derived_seed(seed: int, stream: str, index: int) -> int:
    """A seed for batch ``index`` of the random stream ``stream`` (SHA-256: streams never overlap)."""
    digest = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def generate_images(components: DiffusionComponents, conditions: Conditions, count: int, *, sampler: str,
                    steps: int, guidance: float, seed: int, batch_size: int, spacing: str | None = None,
                    stream: str = "fid", progress: bool = False) -> torch.Tensor:
    """``count`` images ``[N, C, H, W]`` in [-1, 1] (CPU float32); batch ``b`` uses noise seed
    ``derived_seed(seed, stream, b)``, so equal settings give equal images."""
    check_positive("count", count)
    images = []
    with progress_bar(count, f"generate ({stream})", progress) as bar:
        for number, start in enumerate(range(0, count, batch_size)):
            stop = min(start + batch_size, count)
            cond, uncond = conditions.batch(components, start, stop)
            latents = sample_latents(components, cond, uncond, batch_size=stop - start,
                                     seed=derived_seed(seed, stream, number), steps=steps, sampler=sampler,
                                     guidance=guidance, spacing=spacing)
            images.append(decode_images(components, latents).cpu())
            bar.update(stop - start)
    return torch.cat(images)


def features_of(extractor: Extractor, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Extractor features of an image tensor, in chunks (CPU float32)."""
    return extract_features(extractor, images.split(batch_size))
