"""First-stage (autoencoder) losses: LPIPS-style perceptual distance, PatchGAN, adaptive weight."""

from latent_diffusion.losses.autoencoder_loss import AutoencoderLoss, AutoencoderLossConfig
from latent_diffusion.losses.backbones import (
    FeatureExtractor,
    available_backbones,
    build_backbone,
    register_backbone,
)
from latent_diffusion.losses.discriminator import (
    PatchDiscriminator,
    generator_adversarial_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from latent_diffusion.losses.perceptual import PerceptualLoss

__all__ = [
    "AutoencoderLoss",
    "AutoencoderLossConfig",
    "FeatureExtractor",
    "PatchDiscriminator",
    "PerceptualLoss",
    "available_backbones",
    "build_backbone",
    "generator_adversarial_loss",
    "hinge_d_loss",
    "register_backbone",
    "vanilla_d_loss",
]
