"""UNet building blocks: timestep embedding, residual blocks with FiLM, down- and up-sampling.

Module and parameter names follow ``ldm/modules/diffusionmodules/openaimodel.py`` of the
original latent-diffusion / Stable Diffusion code (``in_layers``, ``emb_layers``, ``out_layers``,
``skip_connection``, ``op``, ``conv``) so that their checkpoints load with only a prefix strip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B], as in DDPM / LDM.

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = max_period ** (-i / half)``; cosines come first, as in the original code, so pretrained
    ``time_embed`` weights see the features they were trained on. An odd ``dim`` gets a zero column.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps has shape {tuple(timesteps.shape)}; expected [batch]")
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.to(torch.float32)[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of guidance weights ``w`` [B], as LCM embeds them
    (diffusers' ``get_guidance_scale_embedding``): ``w`` is scaled by 1000, frequencies are
    ``10000 ** (-i / (half - 1))``, sines first; an odd ``dim`` gets a zero column. A latent
    consistency model is given ``w = guidance scale - 1``.
    """
    if w.ndim != 1:
        raise ValueError(f"w has shape {tuple(w.shape)}; expected [batch]")
    half = dim // 2
    if half < 2:
        raise ValueError(f"dim={dim} must be >= 4 for a guidance embedding")
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    args = (w.to(torch.float32) * 1000.0)[:, None] * freqs[None]
    embedding = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so bf16/fp16 statistics stay accurate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` [B, C, ...] per group in float32."""
        # float32 statistics mirror the original's GroupNorm32: a bf16 variance loses digits.
        # Autocast never lowers group_norm, so float inputs keep it in float32.
        out = F.group_norm(x.float(), self.num_groups, _f32(self.weight), _f32(self.bias), self.eps)
        return out.to(x.dtype)


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding (BigGAN-style, as in ADM and LDM).

    With ``use_scale_shift_norm`` the embedding gives a per-channel scale and shift applied after
    the second normalization (FiLM: ``norm(h) * (1 + scale) + shift``); otherwise it is added
    to the features before that normalization (SD 1.x/2.x).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.gradient_checkpointing = gradient_checkpointing
        self.in_layers = nn.Sequential(
            GroupNorm32(norm_groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(norm_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        # A 1x1 conv only where the channel count changes (as the original with use_conv=False).
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` [B, C, H, W], ``emb`` [B, E] -> [B, C_out, H, W]."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = emb_out.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Halve the spatial size with a strided 3x3 convolution (``op``, as in the original)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C_out, H/2, W/2]."""
        return self.op(x)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour interpolation, then a 3x3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C_out, 2H, 2W]."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def pool_context(context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One unit vector [B, D] per prompt: the mean of its real tokens' states [B, L, D], L2-normalized.

    On all-MiniLM-L6-v2's states this is exactly its sentence embedding (sentence-transformers'
    mean pooling, then ``Normalize``), the vector it was trained to place paraphrases close
    together with. ``mask`` [B, L] (True for real tokens) keeps padding out; a row with no real
    token pools to zeros rather than dividing by zero.
    """
    if mask is None:
        mean = context.mean(dim=1)
    else:
        weights = mask.to(context.dtype).unsqueeze(-1)
        mean = (context * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return F.normalize(mean, dim=-1)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so a residual branch starts as the identity (as in ADM/LDM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


__all__ = ["Downsample", "GroupNorm32", "ResBlock", "Upsample", "pool_context", "timestep_embedding",
           "zero_module"]
