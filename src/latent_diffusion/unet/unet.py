"""The conditional UNet eps_theta(z_t, t, y) of latent diffusion (paper Sec. 3.3, Appendix E).

Layout and module names are those of ``openaimodel.py``'s ``UNetModel`` in the original
latent-diffusion / Stable Diffusion code, so ``model.diffusion_model.*`` weights of SD 1.x/2.x
load after stripping that prefix:

- ``time_embed.{0,2}``: MLP on the sinusoidal timestep embedding; ``label_emb``: class labels.
- ``input_blocks.{i}.{j}``: block 0 is the input conv; then per level ``num_res_blocks`` blocks
  of [ResBlock, SpatialTransformer?] and, except at the last level, a Downsample block.
- ``middle_block.{0,1,2}``: ResBlock, SpatialTransformer (``Identity`` when disabled), ResBlock.
- ``output_blocks.{i}.{j}``: per level (deepest first) ``num_res_blocks + 1`` blocks of
  [ResBlock on the concatenated skip, SpatialTransformer?, Upsample at the level's end].
- ``out.{0,2}``: GroupNorm, SiLU, zero-initialized output conv.

Conditioning: cross-attention to ``context`` (text tokens), class labels added to the time
embedding, and ``concat`` channels stacked onto the noisy latent (inpainting, super-resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from latent_diffusion.attention import Attention, check_context_mask
from latent_diffusion.config import Config
from latent_diffusion.unet.blocks import (
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    pool_context,
    timestep_embedding,
    zero_module,
)
from latent_diffusion.unet.transformer import BasicTransformerBlock, SpatialTransformer
from latent_diffusion.validation import check_channels, check_divisible, check_integer


@dataclass
class UNetConfig(Config):
    """Hyper-parameters of :class:`UNet`; the defaults are Stable Diffusion 1.x's.

    ``attention_levels`` are indices into ``channel_mult`` (level ``i`` works at 1/2**i of the
    latent size). The original configs give ``attention_resolutions`` as downsampling factors
    instead: level ``i`` <-> factor ``2**i``, so LDM's ``[4, 2, 1]`` is ``(0, 1, 2)`` here and
    ``[8, 4, 2]`` is ``(1, 2, 3)``.

    Heads: ``channels // num_heads`` wide each (SD 1.x: 8 heads); with ``head_dim`` set,
    ``channels // head_dim`` heads of that width (SD 2.x: ``head_dim=64``).

    ``num_classes``: labels ``0..num_classes-1`` plus the null label ``num_classes`` (for
    classifier-free guidance), so ``label_emb`` has ``num_classes + 1`` rows.
    ``concat_channels``: extra input channels stacked onto the noisy latent (SD inpainting: 5).
    ``context_dim=None``: no cross-attention; transformer blocks then only self-attend.
    ``time_cond_proj_dim``: width of an extra embedding (a latent consistency model's guidance
    scale, :func:`~latent_diffusion.unet.blocks.guidance_embedding`) projected without bias and
    added to the sinusoidal timestep features, as diffusers' ``time_cond_proj_dim``; the forward
    pass then needs ``timestep_cond``.
    ``pooled_context``: also add the prompt as one vector to the time embedding, so that every
    ResBlock (at every resolution, not only the attention levels) is told what to draw, as Imagen
    and SDXL add a pooled text embedding: :func:`~latent_diffusion.unet.blocks.pool_context` of the
    context (for MiniLM, its sentence embedding), through a linear layer that starts at zero, so a
    model trained without it can be continued with it from the same function.
    """

    in_channels: int = 4
    out_channels: int = 4
    concat_channels: int = 0
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 8
    head_dim: int | None = None
    transformer_depth: int = 1
    context_dim: int | None = 768
    use_linear_projection: bool = False
    num_classes: int | None = None
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    gradient_checkpointing: bool = False
    norm_groups: int = 32
    mid_attention: bool = True
    time_cond_proj_dim: int | None = None
    pooled_context: bool = False

    def __post_init__(self) -> None:
        _check_config(self)

    def heads_and_width(self, channels: int) -> tuple[int, int]:
        """(number of heads, width per head) of a transformer on ``channels`` channels."""
        if self.head_dim is None:
            return self.num_heads, channels // self.num_heads
        return channels // self.head_dim, self.head_dim


class TimestepEmbedSequential(nn.Sequential):
    """A Sequential that hands the time embedding to ResBlocks and the context to transformers."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the layers in order, each with the inputs it needs."""
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """Conditional denoiser eps_theta(z_t, t, y) on latents [B, in_channels, H, W].

    Returns [B, out_channels, H, W] (eps, v or x0, depending on how it is trained). It computes
    in the dtype of its parameters and returns the dtype of ``x``.
    """

    config_class = UNetConfig

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        c = config
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes + 1, emb_dim)
        if c.time_cond_proj_dim is not None:
            self.time_cond_proj = nn.Linear(c.time_cond_proj_dim, c.model_channels, bias=False)
        if c.pooled_context:
            self.context_pool_proj = zero_module(nn.Linear(c.context_dim, emb_dim))
        skip_channels = self._build_input_blocks(emb_dim)
        ch = c.model_channels * c.channel_mult[-1]
        self.middle_block = TimestepEmbedSequential(
            self._res(ch, ch, emb_dim),
            self._transformer(ch) if c.mid_attention else nn.Identity(),
            self._res(ch, ch, emb_dim),
        )
        self._build_output_blocks(emb_dim, skip_channels)
        out_ch = c.model_channels * c.channel_mult[0]
        self.out = nn.Sequential(
            GroupNorm32(c.norm_groups, out_ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(out_ch, c.out_channels, 3, padding=1)),
        )

    # ----- construction -----------------------------------------------------------------

    def _res(self, ch_in: int, ch_out: int, emb_dim: int) -> ResBlock:
        c = self.config
        return ResBlock(
            ch_in, emb_dim, ch_out, c.dropout, c.use_scale_shift_norm, c.norm_groups,
            c.gradient_checkpointing,
        )

    def _transformer(self, ch: int) -> SpatialTransformer:
        c = self.config
        heads, width = c.heads_and_width(ch)
        return SpatialTransformer(
            ch, heads, width, c.transformer_depth, c.context_dim, c.dropout,
            c.use_linear_projection, c.norm_groups, c.gradient_checkpointing,
        )

    def _build_input_blocks(self, emb_dim: int) -> list[int]:
        """Build ``input_blocks``; return the channel count of each block's (skip) output."""
        c = self.config
        in_ch = c.in_channels + c.concat_channels
        blocks = [TimestepEmbedSequential(nn.Conv2d(in_ch, c.model_channels, 3, padding=1))]
        skip_channels = [c.model_channels]
        ch = c.model_channels
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, c.model_channels * mult, emb_dim)]
                ch = c.model_channels * mult
                if level in c.attention_levels:
                    layers.append(self._transformer(ch))
                blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
        self.input_blocks = nn.ModuleList(blocks)
        return skip_channels

    def _build_output_blocks(self, emb_dim: int, skip_channels: list[int]) -> None:
        c = self.config
        skips = list(skip_channels)
        ch = c.model_channels * c.channel_mult[-1]
        blocks = []
        for level in reversed(range(len(c.channel_mult))):
            out_ch = c.model_channels * c.channel_mult[level]
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skips.pop(), out_ch, emb_dim)]
                ch = out_ch
                if level in c.attention_levels:
                    layers.append(self._transformer(ch))
                if level > 0 and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                blocks.append(TimestepEmbedSequential(*layers))
        self.output_blocks = nn.ModuleList(blocks)

    # ----- public API ---------------------------------------------------------------------

    @property
    def downsampling_factor(self) -> int:
        """How much smaller the deepest feature map is; input sizes must be multiples of it."""
        return 2 ** (len(self.config.channel_mult) - 1)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute ResBlocks and transformer blocks in the backward pass (training only)."""
        for module in self.modules():
            if isinstance(module, (ResBlock, BasicTransformerBlock)):
                module.gradient_checkpointing = enabled

    def set_attention_chunk_size(self, chunk_size: int | None) -> None:
        """Process attention queries ``chunk_size`` at a time (same result, less memory)."""
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size={chunk_size!r} must be None or a positive integer")
        for module in self.modules():
            if isinstance(module, Attention):
                module.chunk_size = chunk_size

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        concat: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict from the noisy latent ``x`` [B, in_channels, H, W] at ``timesteps``.

        Args:
            timesteps: [B] or a scalar (used for the whole batch); may be fractional.
            context: [B, L, context_dim] cross-attention tokens (required iff context_dim set).
            context_mask: [B, L] bool, True for real tokens; padding then has no effect.
            class_labels: [B] integers in [0, num_classes]; num_classes is the null label.
            concat: [B, concat_channels, H, W], stacked onto ``x`` (required iff configured).
            timestep_cond: [B, time_cond_proj_dim] (required iff configured), e.g. the guidance
                scale's embedding of a latent consistency model.
        """
        t = self._check_inputs(x, timesteps, context, context_mask, class_labels, concat)
        self._check_timestep_cond(x, timestep_cond)
        dtype = self.time_embed[0].weight.dtype
        features = timestep_embedding(t, self.config.model_channels).to(dtype)
        if timestep_cond is not None:
            features = features + self.time_cond_proj(timestep_cond.to(dtype))
        emb = self.time_embed(features)
        if self.config.num_classes is not None:
            emb = emb + self.label_emb(class_labels)
        context = None if context is None else context.to(dtype)
        if self.config.pooled_context:
            emb = emb + self.context_pool_proj(pool_context(context, context_mask))
        h = x if concat is None else torch.cat([x, concat.to(x.dtype)], dim=1)
        h = h.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context, context_mask)
            skips.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h).to(x.dtype)


    # ----- input validation -------------------------------------------------------------------

    def _check_inputs(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor | None,
        context_mask: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        concat: torch.Tensor | None,
    ) -> torch.Tensor:
        """Raise on any input that does not fit the config; return timesteps as a [B] tensor."""
        c = self.config
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"x must be a float tensor [batch, {c.in_channels}, height, width], got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        check_channels("x", x.shape[1], c.in_channels)
        check_divisible("x height", x.shape[2], self.downsampling_factor)
        check_divisible("x width", x.shape[3], self.downsampling_factor)
        self._check_concat(x, concat)
        self._check_context(x, context, context_mask)
        self._check_class_labels(x, class_labels)
        return _timesteps_for_batch(timesteps, x.shape[0], x.device)

    def _check_concat(self, x: torch.Tensor, concat: torch.Tensor | None) -> None:
        n = self.config.concat_channels
        if n == 0:
            if concat is not None:
                raise ValueError("concat was given but the model has concat_channels=0")
            return
        if concat is None:
            raise ValueError(
                f"concat is required: the model has concat_channels={n}; pass "
                f"[batch, {n}, height, width] (e.g. masked-image latent and mask)"
            )
        if concat.ndim != 4:
            raise ValueError(f"concat has shape {tuple(concat.shape)}; expected [batch, {n}, H, W]")
        check_channels("concat", concat.shape[1], n)
        if concat.shape[0] != x.shape[0] or concat.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"concat has shape {tuple(concat.shape)} but x has {tuple(x.shape)}; "
                "batch, height and width must match"
            )

    def _check_context(
        self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> None:
        dim = self.config.context_dim
        if context is None:
            if dim is not None:
                raise ValueError(
                    f"context is required: the model has context_dim={dim}; pass "
                    f"[batch, tokens, {dim}] (an empty prompt's encoding for unconditional)"
                )
            if context_mask is not None:
                raise ValueError("context_mask was given without a context")
            return
        if dim is None:
            raise ValueError("context was given but the model has context_dim=None")
        if context.ndim != 3 or context.shape[2] != dim or context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context has shape {tuple(context.shape)}; expected "
                f"[{x.shape[0]}, tokens, {dim}] (batch of x, context_dim={dim})"
            )
        if context_mask is not None:
            check_context_mask(context_mask, context.shape[0], context.shape[1])

    def _check_timestep_cond(self, x: torch.Tensor, timestep_cond: torch.Tensor | None) -> None:
        dim = self.config.time_cond_proj_dim
        if dim is None:
            if timestep_cond is not None:
                raise ValueError("timestep_cond was given but the model has time_cond_proj_dim=None")
            return
        if timestep_cond is None:
            raise ValueError(f"timestep_cond is required: the model has time_cond_proj_dim={dim}; pass "
                             f"[batch, {dim}] (guidance_embedding of the guidance scale - 1)")
        if timestep_cond.shape != (x.shape[0], dim):
            raise ValueError(f"timestep_cond has shape {tuple(timestep_cond.shape)}; expected [{x.shape[0]}, {dim}]")

    def _check_class_labels(self, x: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        n = self.config.num_classes
        if n is None:
            if class_labels is not None:
                raise ValueError("class_labels was given but the model has num_classes=None")
            return
        if class_labels is None:
            raise ValueError(
                f"class_labels is required: the model has num_classes={n}; pass [batch] "
                f"integers (use {n}, the null label, for unconditional)"
            )
        if class_labels.dtype == torch.bool or class_labels.is_floating_point() or (
            class_labels.is_complex()
        ):
            raise ValueError(f"class_labels has dtype {class_labels.dtype}; expected integers")
        if tuple(class_labels.shape) != (x.shape[0],):
            raise ValueError(
                f"class_labels has shape {tuple(class_labels.shape)}; expected [{x.shape[0]}]"
            )
        low, high = int(class_labels.min()), int(class_labels.max())
        if low < 0 or high > n:
            raise ValueError(
                f"class_labels contains {low if low < 0 else high}; allowed are 0..{n - 1} "
                f"and {n} (the null label), since num_classes={n}"
            )


def _timesteps_for_batch(
    timesteps: torch.Tensor | float, batch: int, device: torch.device
) -> torch.Tensor:
    """Timesteps as a [batch] tensor on ``device``; only a scalar is broadcast."""
    if not isinstance(timesteps, torch.Tensor):
        if isinstance(timesteps, bool) or not isinstance(timesteps, (int, float)):
            raise ValueError(f"timesteps must be a tensor or a number, got {timesteps!r}")
        timesteps = torch.tensor(float(timesteps))
    if timesteps.dtype == torch.bool or timesteps.is_complex():
        raise ValueError(f"timesteps has dtype {timesteps.dtype}; expected integers or floats")
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(batch)
    elif tuple(timesteps.shape) != (batch,):
        raise ValueError(
            f"timesteps has shape {tuple(timesteps.shape)}; expected [{batch}] (batch of x) "
            "or a scalar"
        )
    return timesteps.to(device)


def _check_config(c: UNetConfig) -> None:
    """Validate a :class:`UNetConfig`, naming the field, its value and what is allowed."""
    for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_heads",
                 "transformer_depth", "norm_groups"):
        check_integer(name, getattr(c, name), 1)
    check_integer("concat_channels", c.concat_channels, 0)
    for name in ("head_dim", "context_dim", "num_classes", "time_cond_proj_dim"):
        if getattr(c, name) is not None:
            check_integer(name, getattr(c, name), 1)
    if not isinstance(c.channel_mult, tuple) or not c.channel_mult:
        raise ValueError(f"channel_mult={c.channel_mult!r} must be a non-empty tuple of integers")
    for m in c.channel_mult:
        check_integer("channel_mult item", m, 1)
    levels = range(len(c.channel_mult))
    if not isinstance(c.attention_levels, tuple) or len(set(c.attention_levels)) != len(
        c.attention_levels
    ) or any(level not in levels for level in c.attention_levels):
        raise ValueError(
            f"attention_levels={c.attention_levels!r} must be a tuple of distinct indices into "
            f"channel_mult, i.e. in 0..{len(c.channel_mult) - 1}"
        )
    if c.pooled_context and c.context_dim is None:
        raise ValueError("pooled_context=True pools the text context, but context_dim=None (no context); "
                         "set context_dim or pooled_context=False")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout={c.dropout!r} must lie in [0, 1)")
    for ch in {c.model_channels * m for m in (1, *c.channel_mult)}:
        if ch % c.norm_groups:
            raise ValueError(
                f"norm_groups={c.norm_groups} does not divide {ch} channels; every "
                "model_channels * channel_mult must be a multiple of norm_groups"
            )
    _check_attention_widths(c)


def _check_attention_widths(c: UNetConfig) -> None:
    widths = {c.model_channels * c.channel_mult[level] for level in c.attention_levels}
    if c.mid_attention:
        widths.add(c.model_channels * c.channel_mult[-1])
    if not widths and c.context_dim is not None:
        raise ValueError(
            f"context_dim={c.context_dim} is set but there is no transformer block "
            "(attention_levels is empty and mid_attention=False); set context_dim=None"
        )
    split, field = (c.num_heads, "num_heads") if c.head_dim is None else (c.head_dim, "head_dim")
    for ch in sorted(widths):
        if ch % split:
            raise ValueError(
                f"{field}={split} does not divide the {ch} channels of a transformer block; "
                f"choose a divisor of every attention level's width"
            )


__all__ = ["TimestepEmbedSequential", "UNet", "UNetConfig"]
