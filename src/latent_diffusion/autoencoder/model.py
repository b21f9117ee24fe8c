"""The first-stage autoencoder of latent diffusion, KL- or VQ-regularized (paper section 3.1).

``Autoencoder`` maps images ``[B, in_channels, H, W]`` to latents ``[B, z_channels, H/f, W/f]``
and back. Module names are exactly those of the original latent-diffusion / Stable Diffusion
first-stage checkpoints (``encoder.*``, ``decoder.*``, ``quant_conv``, ``post_quant_conv`` and,
for VQ, ``quantize.embedding``), so their state dicts load with no key map.

Two views of the latent space:

* ``encode``/``decode`` are the autoencoder's own: ``encode`` returns a posterior (a
  :class:`DiagonalGaussian` or a :class:`QuantizedLatent`), ``decode`` takes a latent that is
  already regularized (for VQ: quantized).
* ``encode_latents``/``decode_latents`` are what diffusion uses: latents multiplied by
  ``config.scale_factor`` (1/std of the latents, so diffusion sees roughly unit variance).
  For VQ they follow LDM's ``VQModelInterface``: the diffusion model works on the
  *pre-quantization* latents and ``decode_latents`` quantizes before decoding, so whatever the
  sampler produces is snapped back onto the codebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

import torch
from torch import nn

from latent_diffusion.autoencoder.blocks import Decoder, Encoder
from latent_diffusion.autoencoder.kl import DiagonalGaussian
from latent_diffusion.autoencoder.vq import QuantizedLatent, VectorQuantizer
from latent_diffusion.config import Config
from latent_diffusion.io import load_module
from latent_diffusion.validation import (
    check_channels,
    check_choice,
    check_divisible,
    check_in_range,
    check_positive,
)

Posterior: TypeAlias = DiagonalGaussian | QuantizedLatent

ALLOWED_FACTORS = (1, 2, 4, 8, 16)


@dataclass
class AutoencoderConfig(Config):
    """Hyper-parameters of :class:`Autoencoder`; defaults are Stable Diffusion's KL-f8 VAE.

    ``channel_mult`` has one entry per resolution level, so the downsampling factor is
    ``f = 2 ** (len(channel_mult) - 1)``. ``scale_factor`` is 1/std of the latents, measured
    after training (SD v1: 0.18215) and stored here so a checkpoint folder is self-contained.
    ``codebook_size`` and ``commitment_beta`` only matter for ``regularizer="vq"``.
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    regularizer: Literal["kl", "vq"] = "kl"
    codebook_size: int = 8192
    commitment_beta: float = 0.25
    dropout: float = 0.0
    norm_groups: int = 32
    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        check_choice("regularizer", self.regularizer, ("kl", "vq"))
        positive = ("in_channels", "out_channels", "base_channels", "num_res_blocks", "z_channels",
                    "codebook_size", "norm_groups")
        for name in positive:
            check_positive(name, getattr(self, name))
        check_positive("commitment_beta", self.commitment_beta, allow_zero=True)
        check_in_range("dropout", self.dropout, 0.0, 1.0)
        check_positive("scale_factor", self.scale_factor)
        self._check_channel_mult()
        self._check_norm_groups()

    def _check_channel_mult(self) -> None:
        levels = len(self.channel_mult)
        if not 1 <= levels <= len(ALLOWED_FACTORS):
            raise ValueError(
                f"channel_mult={self.channel_mult!r} has {levels} levels, giving a downsampling factor "
                f"of 2**{levels - 1}; use 1 to {len(ALLOWED_FACTORS)} levels (factors {list(ALLOWED_FACTORS)})"
            )
        for i, mult in enumerate(self.channel_mult):
            check_positive(f"channel_mult[{i}]", mult)

    def _check_norm_groups(self) -> None:
        # Every GroupNorm sees base_channels * m for an integer m (m = 1 or a channel_mult entry),
        # so divisibility of base_channels is necessary and sufficient.
        if self.base_channels % self.norm_groups != 0:
            raise ValueError(
                f"norm_groups={self.norm_groups} does not divide base_channels={self.base_channels}; "
                "GroupNorm needs every channel count (base_channels * channel_mult[i]) to be a "
                "multiple of norm_groups: choose a norm_groups that divides base_channels"
            )

    @property
    def downsampling_factor(self) -> int:
        """Spatial factor ``f`` between images and latents."""
        return 2 ** (len(self.channel_mult) - 1)


class Autoencoder(nn.Module):
    """First-stage autoencoder: LDM encoder/decoder with a KL or VQ bottleneck (see module doc)."""

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise ValueError(f"config must be an AutoencoderConfig, got {type(config).__name__}")
        self.config = config
        z = config.z_channels
        # KL: the encoder predicts mean and log-variance (LDM's double_z); VQ: just z.
        moments = 2 * z if config.regularizer == "kl" else z
        common = dict(base_channels=config.base_channels, channel_mult=config.channel_mult,
                      num_res_blocks=config.num_res_blocks, groups=config.norm_groups, dropout=config.dropout)
        self.encoder = Encoder(in_channels=config.in_channels, out_channels=moments, **common)
        self.decoder = Decoder(out_channels=config.out_channels, z_channels=z, **common)
        self.quant_conv = nn.Conv2d(moments, moments, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(z, z, kernel_size=1)
        if config.regularizer == "vq":
            self.quantize = VectorQuantizer(config.codebook_size, z, config.commitment_beta)

    @property
    def downsampling_factor(self) -> int:
        """Spatial factor ``f`` between images and latents."""
        return self.config.downsampling_factor

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (``z_channels``)."""
        return self.config.z_channels

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's final conv, for the adaptive GAN weight of the first-stage loss."""
        return self.decoder.conv_out.weight

    def encode(self, x: torch.Tensor) -> Posterior:
        """Images ``[B, in_channels, H, W]`` -> posterior over latents ``[B, z_channels, H/f, W/f]``."""
        h = self._pre_quant(x)
        if self.config.regularizer == "kl":
            return DiagonalGaussian.from_moments(h)
        return self.quantize(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, z_channels, h, w]`` (for VQ: already quantized) -> images ``[B, C_out, h*f, w*f]``."""
        self._check_latents(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample_posterior: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, Posterior]:
        """Reconstruct ``x``; returns ``(reconstruction, posterior)`` for the first-stage loss."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior

    def encode_latents(self, x: torch.Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Diffusion-ready latents: ``scale_factor`` times the posterior mode (or a sample).

        For VQ these are the pre-quantization latents (LDM's ``VQModelInterface``); ``sample``
        and ``generator`` do not apply there.
        """
        if self.config.regularizer == "vq":
            return self._pre_quant(x) * self.config.scale_factor
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return z * self.config.scale_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images from diffusion latents: ``decode(z / scale_factor)``, quantizing first for VQ."""
        self._check_latents(z)
        z = z / self.config.scale_factor
        if self.config.regularizer == "vq":
            z = self.quantize(z).quantized
        return self.decode(z)

    def _pre_quant(self, x: torch.Tensor) -> torch.Tensor:
        """``quant_conv(encoder(x))``: KL moments, or VQ latents before quantization."""
        self._check_images(x)
        return self.quant_conv(self.encoder(x))

    def _check_images(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; pass images shaped "
                f"[batch, {self.config.in_channels}, height, width]"
            )
        check_channels("x", x.shape[1], self.config.in_channels)
        f = self.downsampling_factor
        check_divisible("x height", x.shape[2], f)
        check_divisible("x width", x.shape[3], f)

    def _check_latents(self, z: torch.Tensor) -> None:
        if z.ndim != 4:
            raise ValueError(
                f"z has shape {tuple(z.shape)}; pass latents shaped "
                f"[batch, {self.latent_channels}, height, width]"
            )
        check_channels("z", z.shape[1], self.latent_channels)


def load_autoencoder(folder: str | Path, setting: str = "autoencoder") -> Autoencoder:
    """A trained autoencoder, frozen, from a folder with ``autoencoder.json`` and ``.safetensors``.

    ``setting`` names the config key the folder came from, for the error when it is not one.
    """
    folder = Path(folder)
    if not (folder / "autoencoder.json").is_file():
        raise FileNotFoundError(
            f"{setting}={str(folder)!r} has no autoencoder.json; train one with "
            f"`ldm train autoencoder --config FILE` and point `{setting}:` at its final/ folder "
            "(or at a model folder such as models/emoji-32)"
        )
    model = load_module(Autoencoder, AutoencoderConfig, folder, "autoencoder")
    model.requires_grad_(False)
    return model.eval()
