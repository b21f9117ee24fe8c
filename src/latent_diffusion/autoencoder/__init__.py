"""First-stage autoencoder of latent diffusion: KL- or VQ-regularized, SD/LDM checkpoint names."""

from latent_diffusion.autoencoder.blocks import AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample
from latent_diffusion.autoencoder.kl import DiagonalGaussian
from latent_diffusion.autoencoder.model import Autoencoder, AutoencoderConfig, Posterior, load_autoencoder
from latent_diffusion.autoencoder.tiny import TinyDecodedAutoencoder, TinyDecoder, TinyDecoderConfig
from latent_diffusion.autoencoder.vq import QuantizedLatent, VectorQuantizer, code_perplexity

__all__ = [
    "AttnBlock",
    "Autoencoder",
    "AutoencoderConfig",
    "Decoder",
    "DiagonalGaussian",
    "Downsample",
    "Encoder",
    "Posterior",
    "QuantizedLatent",
    "ResnetBlock",
    "TinyDecodedAutoencoder",
    "TinyDecoder",
    "TinyDecoderConfig",
    "Upsample",
    "VectorQuantizer",
    "code_perplexity",
    "load_autoencoder",
]
