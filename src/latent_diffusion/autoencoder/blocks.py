"""Encoder and decoder of the first-stage autoencoder (Rombach et al. 2022, appendix G).

The layers follow the original latent-diffusion / Stable Diffusion code
(``ldm/modules/diffusionmodules/model.py``) one to one, *including attribute names*, so a state
dict of a real SD or LDM VAE loads into these modules without any key map:
``down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``, ``down.{i}.downsample.conv``,
``mid.{block_1,attn_1,block_2}``, ``up.{i}.block.{j}``, ``up.{i}.upsample.conv``, ``norm_out``,
``conv_in``/``conv_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with LDM's epsilon (1e-6); the caller has checked that ``groups`` divides ``channels``."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, dropout before the second conv.

    A 1x1 ``nin_shortcut`` projects the skip path when the channel count changes. There is no
    timestep embedding: the autoencoder is not a diffusion model (LDM builds it with ``temb_ch=0``).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = normalize(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = normalize(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``shortcut(x) + residual(x)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with 1x1-conv q/k/v/proj_out.

    Kept as 1x1 convolutions (not linear layers) because that is how the original checkpoints
    store them; the attention itself runs through ``scaled_dot_product_attention`` whose default
    scale 1/sqrt(C) equals LDM's ``c**-0.5``.
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = normalize(channels, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + proj_out(attention(norm(x)))``."""
        b, c, h, w = x.shape
        normed = self.norm(x)
        # [B, C, H, W] -> [B, 1 head, H*W tokens, C]. Contiguous, or PyTorch's CPU kernel takes the
        # math path and stores the whole [T, T] score matrix: 2.3 GB at 128x128 latents, measured,
        # and 2^38 bytes asked for a 512 px input to the x4 upscaler; contiguous, 8 MB.
        q, k, v = (
            t.reshape(b, 1, c, h * w).transpose(-1, -2).contiguous()
            for t in (self.q(normed), self.k(normed), self.v(normed))
        )
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv after LDM's asymmetric (right/bottom) zero pad.

    Padding only the right and bottom by one (instead of ``padding=1``) is what the original
    weights were trained with; symmetric padding would shift every feature by half a pixel.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the input at half the height and width."""
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the input at twice the height and width."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """The bottleneck ``block_1 -> attn_1 -> block_2``, the only place the VAE attends globally."""

    def __init__(self, channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups, dropout)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the three sub-blocks in order."""
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: a ``block`` list of ResnetBlocks and an optional resampler.

    The resampler is registered as ``downsample`` (encoder) or ``upsample`` (decoder), matching
    the original checkpoints; the last encoder level and the first decoder level have none.
    """

    def __init__(self, blocks: list[ResnetBlock], resample_name: str, resampler: nn.Module | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        # Only the name is kept as a plain attribute: a second reference to the module would
        # register it twice and duplicate its keys in the state dict.
        self.resample_name = resample_name if resampler is not None else None
        if resampler is not None:
            self.add_module(resample_name, resampler)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks, then resample if this level does."""
        for block in self.block:
            x = block(x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class Encoder(nn.Module):
    """Image -> latent moments. Downsamples by ``2**(len(channel_mult)-1)``.

    ``out_channels`` is ``2 * z_channels`` for the KL autoencoder (mean and log-variance,
    LDM's ``double_z=True``) and ``z_channels`` for the VQ autoencoder.
    """

    def __init__(self, in_channels: int, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, out_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, kernel_size=3, padding=1)
        block_in = base_channels
        levels = []
        for i, mult in enumerate(channel_mult):
            block_out = base_channels * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
            last = i == len(channel_mult) - 1
            levels.append(Level(blocks, "downsample", None if last else Downsample(block_in)))
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, groups, dropout)
        self.norm_out = normalize(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the encoder output (before ``quant_conv``)."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image. Mirrors the encoder with ``num_res_blocks + 1`` blocks per level, as in LDM.

    ``up`` is indexed like the encoder's ``down`` (``up[0]`` is the full-resolution level) but run
    from the last index to the first, which is how the original code stores it.
    """

    def __init__(self, out_channels: int, base_channels: int, channel_mult: tuple[int, ...],
                 num_res_blocks: int, z_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        block_in = base_channels * channel_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, padding=1)
        self.mid = MidBlock(block_in, groups, dropout)
        levels: list[Level] = []
        for i in reversed(range(len(channel_mult))):
            block_out = base_channels * channel_mult[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, groups, dropout))
                block_in = block_out
            first = i == 0
            levels.insert(0, Level(blocks, "upsample", None if first else Upsample(block_in)))
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return the reconstruction (after ``post_quant_conv`` was applied by the caller)."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
