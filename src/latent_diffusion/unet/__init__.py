"""The conditional UNet denoiser of latent diffusion, laid out as the original ``openaimodel.py``.

``UNet(UNetConfig(...))(x, timesteps, context=..., context_mask=..., class_labels=..., concat=...)``
"""

from latent_diffusion.unet.blocks import (
    Downsample,
    ResBlock,
    Upsample,
    guidance_embedding,
    pool_context,
    timestep_embedding,
)
from latent_diffusion.unet.transformer import BasicTransformerBlock, SpatialTransformer
from latent_diffusion.unet.unet import TimestepEmbedSequential, UNet, UNetConfig

__all__ = [
    "BasicTransformerBlock",
    "Downsample",
    "ResBlock",
    "SpatialTransformer",
    "TimestepEmbedSequential",
    "UNet",
    "UNetConfig",
    "Upsample",
    "guidance_embedding",
    "pool_context",
    "timestep_embedding",
]
