"""A tiny decoder for fast previews and fast models: TAESD's decoder (Bohan, 2023; diffusers'
``AutoencoderTiny``), trained to stand in for an autoencoder's decoder.

The full decoder (blocks.py) keeps 128 channels at full resolution with GroupNorm and attention;
at 64 px it is a fifth of a 4-step consistency model's call. This one is plain 3x3 convolutions
and ReLUs, no norm, no attention: about a third of the arithmetic at the same resolution, and it
decodes the *diffusion latents* directly (already multiplied by the autoencoder's scale factor),
as TAESD decodes Stable Diffusion's scaled latents. The encoder is not replaced: encoding is done
once per image-to-image call, decoding once per image.

Layer order and names are diffusers' ``DecoderTiny`` (``layers.{i}``, blocks ``conv.{0,2,4}`` and
``skip``), so an ``AutoencoderTiny`` decoder's state dict (``decoder.*``, TAESD) loads with the
prefix stripped. One generalization: ``channels`` may narrow level by level (the conv after each
upsampling maps level i's width to level i+1's); equal widths are diffusers' layout exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latent_diffusion.config import Config
from latent_diffusion.validation import check_channels, check_positive


@dataclass
class TinyDecoderConfig(Config):
    """Hyper-parameters of :class:`TinyDecoder`; defaults are TAESD's decoder for SD (f=8).

    ``blocks[i]`` residual blocks run at level i (coarsest first) with ``channels[i]`` channels;
    there is a 2x upsampling between levels, so ``f = 2 ** (len(blocks) - 1)``. ``latent_clamp``
    is the soft bound ``c * tanh(z / c)`` applied to the latents first (TAESD: 3), so an
    out-of-range sample cannot blow the ReLU network up.
    """

    latent_channels: int = 4
    out_channels: int = 3
    channels: tuple[int, ...] = (64, 64, 64, 64)
    blocks: tuple[int, ...] = (3, 3, 3, 1)
    latent_clamp: float = 3.0

    def __post_init__(self) -> None:
        check_positive("latent_channels", self.latent_channels)
        check_positive("out_channels", self.out_channels)
        check_positive("latent_clamp", self.latent_clamp)
        if len(self.channels) != len(self.blocks) or not 1 <= len(self.blocks) <= 5:
            raise ValueError(f"channels={list(self.channels)} and blocks={list(self.blocks)} must have one entry per "
                             "level, 1 to 5 levels (downsampling factor 2 ** (levels - 1))")
        for i, (width, count) in enumerate(zip(self.channels, self.blocks)):
            check_positive(f"channels[{i}]", width)
            check_positive(f"blocks[{i}]", count, allow_zero=True)

    @property
    def downsampling_factor(self) -> int:
        """Spatial factor ``f`` between images and latents."""
        return 2 ** (len(self.blocks) - 1)


class TinyBlock(nn.Module):
    """``relu(conv(relu(conv(relu(conv(x))))) + x)``: diffusers' ``AutoencoderTinyBlock`` at equal widths
    (where its ``skip`` is an identity, which holds no weights)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual block."""
        return self.fuse(self.conv(x) + x)


class TinyDecoder(nn.Module):
    """Diffusion latents ``[B, latent_channels, h, w]`` -> images in about [-1, 1] ``[B, out_channels, h*f, w*f]``.

    Answers ``decode_latents`` like :class:`~latent_diffusion.autoencoder.Autoencoder`, so the
    pipelines, tiling and the OpenVINO backend use either without knowing which.
    """

    config_class = TinyDecoderConfig

    def __init__(self, config: TinyDecoderConfig) -> None:
        super().__init__()
        if not isinstance(config, TinyDecoderConfig):
            raise ValueError(f"config must be a TinyDecoderConfig, got {type(config).__name__}")
        self.config = config
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, config.channels[0], kernel_size=3, padding=1),
                                   nn.ReLU()]
        last = len(config.blocks) - 1
        for i, (width, count) in enumerate(zip(config.channels, config.blocks)):
            layers += [TinyBlock(width) for _ in range(count)]
            if i < last:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            out = config.out_channels if i == last else config.channels[i + 1]
            layers.append(nn.Conv2d(width, out, kernel_size=3, padding=1, bias=i == last))
        self.layers = nn.Sequential(*layers)

    @property
    def downsampling_factor(self) -> int:
        """Spatial factor ``f`` between images and latents."""
        return self.config.downsampling_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latents it decodes."""
        return self.config.latent_channels

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv, for the adaptive GAN weight of the first-stage loss."""
        return self.layers[-1].weight

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (before clamping) from diffusion latents (scaled, as the UNet makes them)."""
        if z.ndim != 4:
            raise ValueError(f"z has shape {tuple(z.shape)}; pass latents shaped [batch, {self.latent_channels}, "
                             "height, width]")
        check_channels("z", z.shape[1], self.latent_channels)
        c = self.config.latent_clamp
        # The network's own output is in [0, 1] (TAESD's convention); pipelines work in [-1, 1].
        return self.layers(torch.tanh(z / c) * c).mul(2).sub(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``decode_latents(z)``."""
        return self.decode_latents(z)


class TinyDecodedAutoencoder(nn.Module):
    """An autoencoder whose reconstructions the tiny decoder makes: ``forward(x)`` encodes with the
    (frozen) ``autoencoder`` and decodes its latents times ``scale_factor`` with ``tiny``, returning
    ``(reconstruction, posterior)`` like ``Autoencoder.forward`` - what training the tiny decoder and
    scoring its reconstructions (``ldm eval``) take.

    ``scale_factor`` defaults to the autoencoder's own (a training config may not carry it).
    """

    def __init__(self, autoencoder: nn.Module, tiny: TinyDecoder, scale_factor: float | None = None) -> None:
        super().__init__()
        self.autoencoder, self.tiny = autoencoder, tiny
        self.scale_factor = autoencoder.config.scale_factor if scale_factor is None else scale_factor

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, object]:
        """``(tiny reconstruction of x, the autoencoder's posterior)``; no gradient reaches the encoder."""
        with torch.no_grad():
            posterior = self.autoencoder.encode(x)
            z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.tiny.decode_latents(z * self.scale_factor), posterior


def tiny_decoder_state_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder half of a diffusers ``AutoencoderTiny`` state dict, in :class:`TinyDecoder`'s names.

    Raises a ValueError naming the problem when ``state`` holds no ``decoder.layers.*`` tensors.
    """
    decoder = {key.removeprefix("decoder."): value for key, value in state.items() if key.startswith("decoder.")}
    if not any(key.startswith("layers.") for key in decoder):
        raise ValueError("no decoder.layers.* tensors: this is not a diffusers AutoencoderTiny (TAESD) state dict")
    return decoder


def tiny_decoder_config_from_diffusers(config: dict) -> TinyDecoderConfig:
    """:class:`TinyDecoderConfig` from a diffusers ``AutoencoderTiny`` ``config.json``."""
    channels = tuple(config.get("decoder_block_out_channels", (64, 64, 64, 64)))
    blocks = tuple(config.get("num_decoder_blocks", (3, 3, 3, 1)))
    if config.get("act_fn", "relu") != "relu" or config.get("upsample_fn", "nearest") != "nearest":
        raise ValueError(f"AutoencoderTiny with act_fn={config.get('act_fn')!r}, upsample_fn="
                         f"{config.get('upsample_fn')!r}: only relu and nearest (TAESD's) are supported")
    if int(config.get("upsampling_scaling_factor", 2)) != 2:
        raise ValueError("AutoencoderTiny with upsampling_scaling_factor != 2 is not supported")
    return TinyDecoderConfig(latent_channels=int(config.get("latent_channels", 4)),
                             out_channels=int(config.get("out_channels", 3)), channels=channels, blocks=blocks)
