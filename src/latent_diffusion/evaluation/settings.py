"""What decides the numbers of one evaluation: :class:`EvalSettings` and the metric groups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from latent_diffusion.config import Config
from latent_diffusion.data import DATASET_NAMES, EMOJI_STYLES_SPLITS
from latent_diffusion.data.common import SPLITS
from latent_diffusion.data.emoji import STYLES as EMOJI_STYLES
from latent_diffusion.data.emoji_styles.styles import check_styles
from latent_diffusion.model.reverse_process import DEFAULT_SAMPLING
from latent_diffusion.sampling import SAMPLERS
from latent_diffusion.sampling.discretization import SPACINGS
from latent_diffusion.validation import check_choice, check_positive

Extractor = Callable[[torch.Tensor], torch.Tensor]
STYLES_GROUPS = ("composition", "memorization", "diversity")  # emoji-styles text models only
METRIC_GROUPS = ("reconstruction", "fid", "adherence", *STYLES_GROUPS)
STYLED_DATA = ("emoji", "emoji-styles")  # the datasets with styles and skin tones
DEFAULT_DIFFUSION_SAMPLES = 256
# A model is evaluated as `ldm generate` samples it (DEFAULT_SAMPLING: dpmpp_2m, 25 steps, guidance 5),
# so `ldm eval MODEL` gives its card's figures without flags.
DEFAULT_SAMPLER = DEFAULT_SAMPLING["sampler"]
DEFAULT_GUIDANCE = DEFAULT_SAMPLING["guidance"]
DEFAULT_STEPS = DEFAULT_SAMPLING["steps"]
RESULT_FORMAT = "latent-diffusion-eval"


@dataclass
class EvalSettings(Config):
    """Everything that decides the numbers of one evaluation (written into the result JSON).

    ``num_samples``: generated images for FID/KID (None = 256); for an autoencoder folder the
    number of images reconstructed (None = the whole split). ``num_reference``: real images of a
    diffusion model's evaluation, for FID/KID and reconstruction (None = the whole split), spread
    evenly over the split. ``resolution``: for
    autoencoder folders (default 64); a diffusion model has its own. ``guidance``: None = 5 for
    conditional models, 1 (no guidance) for unconditional ones. ``spacing``: None = the sampler's
    default (``model.reverse_process.DEFAULT_SPACING``).
    """

    model: str
    data: str = "emoji"
    data_path: str | None = None
    split: Literal["train", "validation", "composition", "all"] = "validation"
    val_fraction: float | None = None
    caption_mode: Literal["full", "name", "variant"] = "full"
    resolution: int | None = None
    num_samples: int | None = None
    num_reference: int | None = None
    metrics: tuple[str, ...] = ()
    sampler: str | None = None  # None: the model's (dpmpp_2m; lcm for a consistency model)
    steps: int | None = None  # None: the model's (25; a consistency model's own)
    guidance: float | None = None
    spacing: str | None = None
    seed: int = 0
    batch_size: int = 16
    adherence_prompts: int = 100
    kid_subsets: int = 100
    perceptual: bool = True
    device: str = "cpu"
    # emoji-styles generalization groups: samples checked for copies, prompts x seeds for diversity
    memorization_samples: int = 128
    diversity_prompts: int = 16
    diversity_seeds: int = 4
    # emoji and emoji-styles: the styles and whether skin-tone variants are in the split (None: all styles).
    # The adherence gallery always holds every emoji picture, whatever these say.
    styles: tuple[str, ...] | None = None
    skin_tones: bool = True

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATASET_NAMES)
        check_choice("split", self.split, EMOJI_STYLES_SPLITS if self.data == "emoji-styles" else SPLITS)
        check_choice("caption_mode", self.caption_mode, ("full", "name", "variant"))
        if self.sampler is not None:
            check_choice("sampler", self.sampler, sorted(SAMPLERS))
        if self.spacing is not None:
            check_choice("spacing", self.spacing, SPACINGS)
        if self.steps is not None:
            check_positive("steps", self.steps)
        for name in ("batch_size", "adherence_prompts", "kid_subsets", "memorization_samples", "diversity_prompts"):
            check_positive(name, getattr(self, name))
        if self.diversity_seeds < 2:
            raise ValueError(f"diversity_seeds={self.diversity_seeds!r} must be >= 2 (diversity compares pairs)")
        if (self.styles is not None or not self.skin_tones) and self.data not in STYLED_DATA:
            raise ValueError(f"styles and skin_tones select emoji pictures; data={self.data!r} has neither")
        if self.data == "emoji-styles" and self.styles is not None:
            self.styles = check_styles(self.styles)
        for style in (self.styles or ()) if self.data == "emoji" else ():
            check_choice("styles", style, EMOJI_STYLES)
        for name in ("num_samples", "resolution"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        if self.num_reference is not None and self.num_reference < 2:
            raise ValueError(f"num_reference={self.num_reference!r} must be >= 2 (FID needs a covariance)")
        if self.guidance is not None:
            check_positive("guidance", self.guidance, allow_zero=True)
        for group in self.metrics:
            check_choice("metrics", group, METRIC_GROUPS)
        if self.data == "imagefolder" and not self.data_path:
            raise ValueError("data_path is required for data='imagefolder': the folder of images")
