"""Tiled decoding and encoding: large images through the autoencoder in bounded memory.

The decoder's activations grow with the image (SD's VAE keeps 128-512 channels at full
resolution), so a large image is decoded as overlapping latent tiles. Each tile's output is
weighted by a ramp that rises across the overlap and is 1 elsewhere (and at the image border);
the weighted outputs are summed and divided by the summed weights. Any such blend is seamless
where the decoder is local, and hides the seam where it is not (the mid-block attention only sees
its tile). With a single tile the result is exactly the untiled one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from latent_diffusion.validation import check_positive


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` covering ``size`` with at least ``overlap`` in common.

    The last tile is moved back to end at ``size``, so every tile has full size and no tile is a
    thin sliver (which would decode badly).
    """
    if tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(length: int, fade: int, fade_start: bool, fade_end: bool, device: torch.device) -> torch.Tensor:
    """Weights along one axis: rising over ``fade`` samples at a faded start, falling at a faded end."""
    w = torch.ones(length, device=device)
    if fade > 0:
        rise = torch.arange(1, fade + 1, device=device, dtype=torch.float32) / (fade + 1)
        if fade_start:
            w[:fade] = torch.minimum(w[:fade], rise)
        if fade_end:
            w[-fade:] = torch.minimum(w[-fade:], rise.flip(0))
    return w


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                scale: float, interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """``fn`` (which maps ``[B, C, h, w]`` to ``[B, C', h * scale, w * scale]``) applied tile by tile.

    ``tile`` and ``overlap`` are in units of ``x``; outputs are blended over the overlap.
    ``interrupt()`` is called before each tile: raising there stops the work between tiles.
    """
    check_positive("tile", tile)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap={overlap} must lie in [0, tile={tile})")
    height, width = x.shape[-2:]
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return fn(x)
    out = weight = None
    fade = int(round(overlap * scale))
    for top in rows:
        for left in cols:
            if interrupt is not None:
                interrupt()
            h, w = min(tile, height), min(tile, width)
            piece = fn(x[..., top : top + h, left : left + w]).float()
            ph, pw = piece.shape[-2:]
            if out is None:
                out = piece.new_zeros(*piece.shape[:-2], int(height * scale), int(width * scale))
                weight = piece.new_zeros(int(height * scale), int(width * scale))
            wy = _ramp(ph, fade, top > 0, top + h < height, piece.device)
            wx = _ramp(pw, fade, left > 0, left + w < width, piece.device)
            mask = wy[:, None] * wx[None, :]
            oy, ox = int(top * scale), int(left * scale)
            out[..., oy : oy + ph, ox : ox + pw] += piece * mask
            weight[oy : oy + ph, ox : ox + pw] += mask
    return (out / weight).to(x.dtype)


def decode_latents_tiled(autoencoder: torch.nn.Module, z: torch.Tensor, tile: int = 64,
                         overlap: int = 16, interrupt: Callable[[], None] | None = None) -> torch.Tensor:
    """``autoencoder.decode_latents(z)`` in overlapping latent tiles of ``tile`` (default 64 = 512 px
    for SD), blended over ``overlap`` latents. Peak memory is that of one tile; ``interrupt`` as in
    :func:`tiled_apply`."""
    f = autoencoder.downsampling_factor
    return tiled_apply(autoencoder.decode_latents, z, tile, overlap, float(f), interrupt)


__all__ = ["decode_latents_tiled", "tile_starts", "tiled_apply"]
