"""The SpatialTransformer: how LDM injects a conditioning sequence into the UNet (paper Sec. 3.3).

A feature map is normalized, projected, flattened to tokens and passed through transformer
blocks (self-attention, cross-attention to the context tau_theta(y), gated-GELU feed-forward),
then projected back and added to its input. ``proj_out`` starts at zero, so a fresh block is the
identity and training starts from a plain UNet. Names follow ``ldm/modules/attention.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latent_diffusion.attention import Attention
from latent_diffusion.unet.blocks import GroupNorm32, zero_module


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020): ``a * gelu(b)`` where ``[a, b] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim_in] -> [..., dim_out]."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer feed-forward: GEGLU to ``mult * dim``, dropout, linear back to ``dim``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] -> [B, N, dim]."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, feed-forward, each residual.

    With ``context_dim=None`` there is no cross-attention (no ``attn2``/``norm2``): the block only
    self-attends, which suits unconditional or class-conditional (via the time embedding) models.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.attn1 = Attention(dim, None, heads, head_dim, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = (
            None if context_dim is None else Attention(dim, context_dim, heads, head_dim, dropout)
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = None if context_dim is None else nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens ``x`` [B, N, dim]; ``context`` [B, L, Cc] and its bool mask [B, L]."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, context_mask, use_reentrant=False)
        return self._forward(x, context, context_mask)

    def _forward(
        self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        if self.attn2 is not None:
            x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map [B, C, H, W], residual around the whole.

    ``use_linear_projection`` selects SD 2's ``Linear`` ``proj_in``/``proj_out`` (applied to
    tokens) instead of SD 1's 1x1 convolutions (applied to the map); both are per-pixel linear
    maps, but their checkpoint weights have different shapes.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        depth: int = 1,
        context_dim: int | None = None,
        dropout: float = 0.0,
        use_linear_projection: bool = False,
        norm_groups: int = 32,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        # eps 1e-6 as the original's Normalize() in attention.py (ResBlocks use 1e-5).
        self.norm = GroupNorm32(norm_groups, channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = zero_module(nn.Linear(inner, channels))
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = zero_module(nn.Conv2d(inner, channels, 1))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner, heads, head_dim, context_dim, dropout, gradient_checkpointing
            )
            for _ in range(depth)
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` [B, C, H, W] -> [B, C, H, W], attending to ``context`` where there is one."""
        b, _, h, w = x.shape
        tokens = self.norm(x)
        if not self.use_linear_projection:
            tokens = self.proj_in(tokens)
        tokens = tokens.flatten(2).transpose(1, 2)  # [B, H*W, inner]
        if self.use_linear_projection:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, context_mask)
        if self.use_linear_projection:
            tokens = self.proj_out(tokens)
        tokens = tokens.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear_projection:
            tokens = self.proj_out(tokens)
        return tokens + x


__all__ = ["BasicTransformerBlock", "FeedForward", "GEGLU", "SpatialTransformer"]
