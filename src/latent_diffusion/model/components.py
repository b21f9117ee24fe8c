"""The paper's model object: autoencoder (E, D), UNet (eps_theta), conditioner (tau_theta) and the
noise schedule they were trained with, checked to fit together; and the three maps every task
composes: images -> latents and latents -> images (prompts -> the UNet's conditional and
unconditional inputs is the conditioner's :meth:`~latent_diffusion.conditioning.Conditioner.pair`). Folder I/O is in :mod:`latent_diffusion.model.folder`; the reverse process in
:mod:`latent_diffusion.model.reverse_process`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.autoencoder.tiny import TinyDecoder
from latent_diffusion.autoencoder.tiling import decode_latents_tiled
from latent_diffusion.conditioning import Conditioner
from latent_diffusion.conditioning.image import IMAGE_CONDITIONS, concat_channels
from latent_diffusion.diffusion.consistency import ConsistencyConfig
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule
from latent_diffusion.hardware import autocast
from latent_diffusion.unet import UNet
from latent_diffusion.validation import check_choice


@dataclass
class DiffusionComponents:
    """The parts of a latent diffusion model, ready to sample with."""

    autoencoder: Autoencoder
    unet: UNet
    conditioner: Conditioner
    diffusion: DiffusionConfig
    resolution: int
    # What the UNet's ``concat`` input holds (conditioning/image.py): "none", "masked_image"
    # (an inpainting model) or "low_res" (a super-resolution model, upscaling by low_res_factor).
    image_condition: str = "none"
    low_res_factor: int = 1
    # A latent consistency model (diffusion/consistency.py): its UNet embeds the guidance scale
    # (unet.config.time_cond_proj_dim) and it samples with the lcm sampler.
    consistency: ConsistencyConfig | None = None
    # A fast stand-in for the autoencoder's decoder (autoencoder/tiny.py); when present it decodes.
    tiny_decoder: TinyDecoder | None = None

    def __post_init__(self) -> None:
        check_compatible(self.autoencoder, self.unet, self.conditioner)
        if self.tiny_decoder is not None:
            check_tiny_decoder(self.autoencoder, self.tiny_decoder)
        embedding = self.unet.config.time_cond_proj_dim
        wanted = None if self.consistency is None else self.consistency.embedding_dim
        if embedding != wanted:
            raise ValueError(f"the UNet's time_cond_proj_dim={embedding} does not match the consistency config's "
                             f"embedding_dim={wanted} (a guidance-embedded UNet needs a consistency config, and "
                             "only it)")
        check_choice("image_condition", self.image_condition, IMAGE_CONDITIONS)
        channels = concat_channels(self.image_condition, self.autoencoder.latent_channels,
                                   self.autoencoder.config.out_channels)
        if self.unet.config.concat_channels != channels:
            raise ValueError(f"image_condition={self.image_condition!r} needs unet.concat_channels={channels}, "
                             f"the UNet has {self.unet.config.concat_channels}")
        if self.image_condition == "low_res" and self.low_res_factor < 2:
            raise ValueError(f"low_res_factor={self.low_res_factor} must be >= 2 for a super-resolution model")

    @property
    def schedule(self) -> NoiseSchedule:
        """The noise schedule the UNet was trained with."""
        return NoiseSchedule.from_config(self.diffusion)

    @property
    def decoder(self) -> Autoencoder | TinyDecoder:
        """What turns latents into images (``decode_latents``): the tiny decoder if the model has one,
        else the autoencoder."""
        return self.autoencoder if self.tiny_decoder is None else self.tiny_decoder

    @property
    def networks(self) -> tuple[torch.nn.Module, ...]:
        """Every network of the model."""
        tiny = () if self.tiny_decoder is None else (self.tiny_decoder,)
        return (self.autoencoder, self.unet, self.conditioner, *tiny)

    @property
    def latent_size(self) -> int:
        """Side of the latent grid at the model's native resolution."""
        return self.resolution // self.autoencoder.downsampling_factor

    def to(self, device: str | torch.device) -> "DiffusionComponents":
        """Move every network to ``device`` (in place) and return self."""
        for module in self.networks:
            module.to(device)
        return self

    def eval(self) -> "DiffusionComponents":
        """Put every network in eval mode (and return self)."""
        for module in self.networks:
            module.eval()
        return self


def check_compatible(autoencoder: Autoencoder, unet: UNet, conditioner: Conditioner) -> None:
    """Raise a ValueError when the parts cannot work together (latent channels, context width)."""
    latent = autoencoder.latent_channels
    if unet.config.in_channels != latent or unet.config.out_channels != latent:
        raise ValueError(
            f"unet.in_channels={unet.config.in_channels} / out_channels={unet.config.out_channels} "
            f"must equal the autoencoder's latent channels ({latent})"
        )
    if unet.config.context_dim != conditioner.context_dim:
        raise ValueError(
            f"unet.context_dim={unet.config.context_dim} does not match the conditioner "
            f"(kind={conditioner.kind!r}, context width {conditioner.context_dim}); set "
            f"unet.context_dim to {conditioner.context_dim}"
        )
    wants_labels = conditioner.kind == "class" and conditioner.config.class_mode == "embedding"
    if wants_labels and unet.config.num_classes != conditioner.config.num_classes:
        raise ValueError(
            f"unet.num_classes={unet.config.num_classes} must equal the conditioner's "
            f"num_classes={conditioner.config.num_classes} for class labels by embedding"
        )


def check_tiny_decoder(autoencoder: Autoencoder, tiny: TinyDecoder) -> None:
    """Raise a ValueError when ``tiny`` cannot decode ``autoencoder``'s latents."""
    mine = (autoencoder.latent_channels, autoencoder.downsampling_factor, autoencoder.config.out_channels)
    theirs = (tiny.latent_channels, tiny.downsampling_factor, tiny.config.out_channels)
    if mine != theirs:
        raise ValueError(f"the tiny decoder (latent channels, factor, image channels) = {theirs} does not fit the "
                         f"autoencoder's {mine}: train one for this autoencoder (`ldm train autoencoder` with "
                         "train: tiny_decoder, configs/emoji-styles-tiny-decoder.yaml)")


def encode_images(components: DiffusionComponents, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to diffusion latents (the posterior mode, scaled): deterministic, so
    image-to-image at strength 0 gives back exactly the autoencoder's reconstruction."""
    autoencoder = components.autoencoder
    param = next(autoencoder.parameters())
    with torch.no_grad():
        return autoencoder.encode_latents(images.to(device=param.device, dtype=param.dtype))


def decode_images(components: DiffusionComponents, latents: torch.Tensor, tile: int | None = None,
                  precision: str = "fp32", interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """Decode diffusion latents to images in [-1, 1] (float32, clamped) with ``components.decoder``; ``tile`` (latents per
    side) decodes in overlapping tiles, bounding memory for large images (autoencoder/tiling.py);
    ``precision`` ``bf16`` decodes under bf16 autocast; ``interrupt()`` is called before decoding and
    between tiles (raising there stops the work)."""
    if interrupt is not None:
        interrupt()
    with torch.no_grad(), autocast(precision, latents.device):
        if tile is not None and max(latents.shape[-2:]) > tile:
            images = decode_latents_tiled(components.decoder, latents, tile=tile, overlap=max(1, tile // 4),
                                          interrupt=interrupt)
        else:
            images = components.decoder.decode_latents(latents)
    return images.float().clamp(-1, 1)
