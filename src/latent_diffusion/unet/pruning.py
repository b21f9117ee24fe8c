"""Block removal: a UNet with fewer residual blocks per level, initialised from a wider-stack one.

BK-SDM (Kim et al. 2023, "BK-SDM: A Lightweight, Fast, and Cheap Version of Stable Diffusion")
shrinks Stable Diffusion's UNet by taking residual (+ attention) blocks out of each level and
distilling the rest. A student with ``k`` instead of ``n`` blocks per level keeps, per level:

- on the way down, the first ``k`` blocks (and the level's downsampling);
- on the way up (``n + 1`` blocks, each eating one skip connection), the first ``k`` blocks and
  the last one, which eats the level's entry skip (the downsampling's output or the input
  convolution's) and holds the upsampling.

With that choice every kept block sees inputs of exactly the widths it was trained on, so its
weights load as they are; the stem, the middle block and the output head are unchanged. Fewer
blocks make a batch-1 sampling step cheaper nearly in proportion (the per-layer cost dominates
there), which is what a few-step student needs. The pruned network is only a starting point: it
has to be trained (``ldm train distill`` with ``student_res_blocks``).
"""

from __future__ import annotations

import torch

from latent_diffusion.unet.unet import UNetConfig


def _input_block_map(config: UNetConfig, keep: int) -> list[int]:
    """For each of the student's ``input_blocks``, the index of the teacher block it copies."""
    mapping, index = [0], 1  # the input convolution
    for level in range(len(config.channel_mult)):
        mapping.extend(range(index, index + keep))
        index += config.num_res_blocks
        if level != len(config.channel_mult) - 1:
            mapping.append(index)  # the downsampling
            index += 1
    return mapping


def _output_block_map(config: UNetConfig, keep: int) -> list[int]:
    """For each of the student's ``output_blocks``, the index of the teacher block it copies."""
    mapping = []
    per_level = config.num_res_blocks + 1
    for level_index in range(len(config.channel_mult)):
        first = level_index * per_level
        mapping.extend(range(first, first + keep))
        mapping.append(first + per_level - 1)
    return mapping


def prune_res_blocks(config: UNetConfig, state: dict[str, torch.Tensor],
                     num_res_blocks: int) -> tuple[UNetConfig, dict[str, torch.Tensor]]:
    """The config and state dict of ``config``'s UNet with ``num_res_blocks`` blocks per level
    (kept as the module docstring says); ``num_res_blocks`` equal to the config's returns a copy."""
    if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or \
            not 1 <= num_res_blocks <= config.num_res_blocks:
        raise ValueError(f"num_res_blocks={num_res_blocks!r} must be an integer in [1, {config.num_res_blocks}] "
                         f"(the source UNet has {config.num_res_blocks} residual blocks per level)")
    maps = {"input_blocks": _input_block_map(config, num_res_blocks),
            "output_blocks": _output_block_map(config, num_res_blocks)}
    sources = {group: {old: new for new, old in enumerate(m)} for group, m in maps.items()}
    pruned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        if group not in sources:
            pruned[key] = value
            continue
        index, _, tail = rest.partition(".")
        new = sources[group].get(int(index))
        if new is not None:
            pruned[f"{group}.{new}.{tail}"] = value
    return config.replace(num_res_blocks=num_res_blocks), pruned


__all__ = ["prune_res_blocks"]
