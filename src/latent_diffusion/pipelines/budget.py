"""How much memory one pipeline call needs, estimated from the model's config before any work.

With attention on PyTorch's memory-efficient kernels (the UNet's heads, and the autoencoder's
single head once its queries are contiguous), peak memory is set by convolution feature maps,
whose sizes the config fixes:

* the **decoder** at full resolution: ``DECODER_MAPS`` maps of ``base_channels * channel_mult[0]``
  channels, ``H x W`` each, per image (with VAE tiling: one tile's worth, plus the output canvas
  and its blend weights);
* the **UNet**: every skip connection of the down path stays alive until the up path takes it
  (``num_res_blocks + 1`` maps per level, each level a quarter of the one above), plus
  ``UNET_WORKING_MAPS`` working maps at the top level, for twice the batch (classifier-free guidance
  runs both halves in one call);
* the weights, and a fixed ``OVERHEAD`` for what the runtime allocates on a first call.

The factors come from measurement (``benchmarks/memory_budget.py`` prints the estimate beside the
measured peak RSS, per size): ``models/emoji-32``, one step, grew by 221 / 385 / 1,154 MB at 256 /
512 / 1,024 px, i.e. ~7.6 full-resolution decoder maps per pixel; 10 are counted, plus the overhead,
so the estimate sits 1.5-2x above the measured peak. A call it admits is not killed by the kernel,
and a call it refuses names the largest size that fits.

The budget is ``$LDM_MEMORY_BUDGET_GB`` if set, else 3/4 of the machine's physical memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latent_diffusion.model.components import DiffusionComponents

BUDGET_ENV = "LDM_MEMORY_BUDGET_GB"
DECODER_MAPS = 10
UNET_WORKING_MAPS = 9
OVERHEAD = 512 * 2**20  # the runtime's own growth on a first call (allocator, kernels, text encoder): ~220 MB seen
FLOAT_BYTES = 4  # activations are float32, or bf16 under autocast with float32 norms: counted as float32
GIB = 2**30


def memory_budget() -> int:
    """Bytes one call may use: ``$LDM_MEMORY_BUDGET_GB``, else 3/4 of physical memory."""
    value = os.environ.get(BUDGET_ENV, "").strip()
    if value:
        try:
            gib = float(value)
        except ValueError:
            raise ValueError(f"{BUDGET_ENV}={value!r} is not a number of GiB; set it like {BUDGET_ENV}=8") from None
        if not gib > 0:
            raise ValueError(f"{BUDGET_ENV}={value!r} must be a positive number of GiB")
        return int(gib * GIB)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on POSIX: assume a small machine
        physical = 8 * GIB
    return int(physical * 3 / 4)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of one call: ``weights``, ``OVERHEAD`` and the larger of ``unet`` and ``decoder``
    activations."""

    weights: int
    unet: int
    decoder: int

    @property
    def total(self) -> int:
        """The estimated peak."""
        return self.weights + OVERHEAD + max(self.unet, self.decoder)

    @property
    def largest(self) -> str:
        """Which stage sets the peak."""
        return "UNet" if self.unet >= self.decoder else "decoder"


def estimate_memory(components: DiffusionComponents, size: int, batch: int,
                    vae_tile: int | None = None) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of making ``batch`` images of ``size`` px (``vae_tile``: latents per
    tile side when VAE tiling is on)."""
    ae = components.autoencoder.config
    factor = components.autoencoder.downsampling_factor
    latent = size // factor
    full_channels = ae.base_channels * ae.channel_mult[0]
    if vae_tile is not None and latent > vae_tile:
        side = vae_tile * factor
        decoder = batch * (DECODER_MAPS * full_channels * side * side + 2 * ae.out_channels * size * size)
    else:
        decoder = batch * DECODER_MAPS * full_channels * size * size
    u = components.unet.config
    skips = sum((u.num_res_blocks + 1) * u.model_channels * mult * (latent // 2**level) ** 2
                for level, mult in enumerate(u.channel_mult))
    working = UNET_WORKING_MAPS * u.model_channels * u.channel_mult[0] * latent * latent
    unet = 2 * batch * (skips + working)
    weights = sum(p.numel() * p.element_size() for module in (components.unet, components.autoencoder,
                                                                components.conditioner)
                  for p in module.parameters())
    return MemoryEstimate(weights, unet * FLOAT_BYTES, decoder * FLOAT_BYTES)


def largest_side(components: DiffusionComponents, multiple: int, batch: int, budget: int,
                 vae_tile: int | None = None) -> int:
    """The largest multiple of ``multiple`` whose estimate fits ``budget`` (0 when none does)."""
    low, high = 0, 1
    while estimate_memory(components, high * multiple, batch, vae_tile).total <= budget and high < 2**20:
        low, high = high, high * 2
    while high - low > 1:  # the estimate grows with the size: bisect between fits and does not fit
        middle = (low + high) // 2
        if estimate_memory(components, middle * multiple, batch, vae_tile).total <= budget:
            low = middle
        else:
            high = middle
    return low * multiple


def check_memory(components: DiffusionComponents, size: int, batch: int, multiple: int,
                 vae_tile: int | None = None, tile_hint: int | None = None) -> None:
    """Raise a ValueError naming the largest size that fits when ``batch`` images of ``size`` px would
    not fit the budget; ``tile_hint`` (latents per tile) adds what VAE tiling would allow."""
    budget = memory_budget()
    estimate = estimate_memory(components, size, batch, vae_tile)
    if estimate.total <= budget:
        return
    most = largest_side(components, multiple, batch, budget, vae_tile)
    message = (f"{batch} image(s) of {size}x{size} need about {estimate.total / GIB:.1f} GiB (the "
               f"{estimate.largest}'s activations), over this machine's {budget / GIB:.1f} GiB budget: at most "
               f"{most} px a side on this model" + (f" for {batch} images" if batch > 1 else ""))
    if vae_tile is None and tile_hint is not None:
        tiled = largest_side(components, multiple, batch, budget, tile_hint)
        if tiled > most:
            message += f"; VAE tiling (--vae-tiling) raises it to {tiled}"
    if batch > 1:
        message += "; fewer images per call also help"
    raise ValueError(message + f" (set {BUDGET_ENV} to change the budget)")


__all__ = ["BUDGET_ENV", "MemoryEstimate", "check_memory", "estimate_memory", "largest_side", "memory_budget"]
