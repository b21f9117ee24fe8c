"""Start a UNet from another model's weights (fine-tuning, or a new task from a text-to-image UNet).

Stable Diffusion's inpainting model was made this way: the text-to-image UNet's weights, with the
input convolution widened for the extra concatenated channels (mask, masked-image latent), whose
new weights start at zero so the widened model computes exactly what the old one did.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latent_diffusion.io import load_state_strict, load_tensors
from latent_diffusion.unet import UNet, UNetConfig

INPUT_CONV = "input_blocks.0.0.weight"
POOL_PROJ = "context_pool_proj."


def widen_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``weight`` [C, c_old, k, k] padded with zeros to [C, in_channels, k, k] (c_old <= in_channels)."""
    old = weight.shape[1]
    if in_channels < old:
        raise ValueError(f"cannot narrow the input convolution from {old} to {in_channels} channels")
    wide = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    wide[:, :old] = weight
    return wide


def init_unet_from(unet: UNet, folder: str | Path) -> None:
    """Load the UNet of the model folder ``folder`` into ``unet``.

    The architectures must agree except for extra concatenated input channels in ``unet``, which
    start at zero, and a pooled-context projection ``unet`` has and the folder's UNet lacks, which
    keeps its zero start (so the model begins as the folder's function). Any other difference is an
    error naming the first offending keys.
    """
    folder = Path(folder)
    config_path = folder / "unet.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"init_from={str(folder)!r} has no unet.json; point it at a model folder "
                                "(e.g. a run's final/ folder or models/emoji-styles)")
    source = UNetConfig.load(config_path)
    target = unet.config
    # Gradient checkpointing changes memory, not the function; extra input channels are widened;
    # a pooled-context projection is added at zero (never dropped: that would change the function).
    added_pooling = target.pooled_context and not source.pooled_context
    if source.replace(concat_channels=target.concat_channels,
                      gradient_checkpointing=target.gradient_checkpointing,
                      pooled_context=source.pooled_context or target.pooled_context) != target:
        raise ValueError(f"init_from={str(folder)!r}: its UNet differs from the configured one beyond "
                         f"concat_channels and an added pooled_context; use the same unet section as "
                         f"{str(config_path)!r}")
    state = load_tensors(folder / "unet.safetensors")
    state = {k: v.float() for k, v in state.items()}
    if target.concat_channels != source.concat_channels and INPUT_CONV in state:
        state[INPUT_CONV] = widen_input_conv(state[INPUT_CONV], target.in_channels + target.concat_channels)
    if added_pooling:
        state.update({k: torch.zeros_like(v) for k, v in unet.state_dict().items()
                      if k.startswith(POOL_PROJ)})
    with torch.no_grad():
        load_state_strict(unet, state, source=str(folder / "unet.safetensors"))
