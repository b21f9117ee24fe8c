"""Evaluation metrics: FID/KID on Inception features, reconstruction scores, prompt adherence.

* :mod:`.inception` - the standard FID InceptionV3 (TF 2015-12-05 weights) as a feature extractor.
* :mod:`.fid` - Fréchet distance, feature statistics and the Kernel Inception Distance.
* :mod:`.features_cache` - feature extraction over a dataloader, and an on-disk cache per split.
* :mod:`.reconstruction` - PSNR, SSIM, perceptual distance, rFID and codebook use of an autoencoder.
* :mod:`.adherence` - text-to-image prompt adherence by retrieval against dataset images.
* :mod:`.paired` - two models' retrieval hits on the same prompts, compared prompt by prompt.

Importing this package loads no weights; the networks load when their classes are built.
"""

from latent_diffusion.evaluation.adherence import (
    AdherenceResult,
    EfficientNetLiteEmbedder,
    InceptionEmbedder,
    prompt_adherence,
    retrieval_ranks,
)
from latent_diffusion.evaluation.features_cache import (
    FeatureSet,
    cached_dataset_features,
    cached_features,
    extract_features,
)
from latent_diffusion.evaluation.fid import feature_statistics, fid_exact, frechet_distance, kid
from latent_diffusion.evaluation.inception import InceptionFeatures, tf_bilinear_resize
from latent_diffusion.evaluation.paired import paired_hits
from latent_diffusion.evaluation.reconstruction import ReconstructionMetrics, evaluate_autoencoder, psnr, ssim

__all__ = [
    "AdherenceResult",
    "EfficientNetLiteEmbedder",
    "FeatureSet",
    "InceptionEmbedder",
    "InceptionFeatures",
    "ReconstructionMetrics",
    "cached_dataset_features",
    "cached_features",
    "evaluate_autoencoder",
    "extract_features",
    "feature_statistics",
    "fid_exact",
    "frechet_distance",
    "kid",
    "paired_hits",
    "prompt_adherence",
    "psnr",
    "retrieval_ranks",
    "ssim",
    "tf_bilinear_resize",
]
