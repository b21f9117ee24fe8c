"""The KL autoencoder between ours (= original LDM/SD ``first_stage_model``), diffusers' AutoencoderKL
and their configs.

Only three things differ: diffusers groups layers as ``down_blocks``/``up_blocks`` (its decoder
lists levels deepest first, the original lists them shallowest first and runs them backwards),
renames a few layers, and stores the mid-block attention's q/k/v/out as linear ``[C, C]``
weights where the original has 1x1 convolutions ``[C, C, 1, 1]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.convert.errors import ConversionError

SD_SCALE_FACTOR = 0.18215
ATTENTION_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
RESNET_RENAMES = {"nin_shortcut": "conv_shortcut"}
# Older diffusers folders name the VAE attention like this; read them, write the new names.
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def vae_key_to_diffusers(key: str, levels: int) -> str:
    """The diffusers name of one of our autoencoder keys (KeyError for a key we never have)."""
    part, _, rest = key.partition(".")
    if part in ("quant_conv", "post_quant_conv"):
        return key
    if part not in ("encoder", "decoder"):
        raise KeyError(key)
    name, _, tail = rest.partition(".")
    if name in ("conv_in", "conv_out"):
        return key
    if name == "norm_out":
        return f"{part}.conv_norm_out.{tail}"
    if name == "mid":
        sub, _, leaf = tail.partition(".")
        if sub == "attn_1":
            layer, _, param = leaf.partition(".")
            return f"{part}.mid_block.attentions.0.{ATTENTION_RENAMES[layer]}.{param}"
        index = {"block_1": 0, "block_2": 1}[sub]
        return f"{part}.mid_block.resnets.{index}.{_resnet(leaf)}"
    if name in ("down", "up"):
        match = re.fullmatch(r"(\d+)\.(block\.(\d+)\.(.+)|(downsample|upsample)\.conv\.(.+))", tail)
        if match is None:
            raise KeyError(key)
        level = int(match.group(1))
        group = "down_blocks" if name == "down" else "up_blocks"
        if name == "up":  # diffusers' decoder lists levels deepest first
            level = levels - 1 - level
        if match.group(3) is not None:
            return f"{part}.{group}.{level}.resnets.{match.group(3)}.{_resnet(match.group(4))}"
        sampler = "downsamplers" if name == "down" else "upsamplers"
        return f"{part}.{group}.{level}.{sampler}.0.conv.{match.group(6)}"
    raise KeyError(key)


def _resnet(leaf: str) -> str:
    layer, _, param = leaf.partition(".")
    return f"{RESNET_RENAMES.get(layer, layer)}.{param}"


def vae_shapes(config: AutoencoderConfig) -> dict[str, torch.Size]:
    """Our autoencoder's keys and shapes for ``config`` (built on the meta device)."""
    with torch.device("meta"):
        model = Autoencoder(config)
    return {key: value.shape for key, value in model.state_dict().items()}


def vae_key_map(config: AutoencoderConfig) -> dict[str, str]:
    """Our key -> diffusers key for every tensor of a KL autoencoder with ``config``."""
    levels = len(config.channel_mult)
    return {key: vae_key_to_diffusers(key, levels) for key in vae_shapes(config)}


def _is_projection(diffusers_key: str) -> bool:
    return ".mid_block.attentions.0." in diffusers_key and diffusers_key.endswith(
        tuple(f"{p}.weight" for p in PROJECTIONS))


def vae_to_diffusers(state: Mapping[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """Our autoencoder state dict in diffusers' names and shapes."""
    mapping = vae_key_map(config)
    out = {}
    for key, value in state.items():
        name = mapping[key]
        out[name] = value[:, :, 0, 0] if _is_projection(name) and value.ndim == 4 else value
    return out


def vae_from_diffusers(state: Mapping[str, torch.Tensor], config: AutoencoderConfig) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict (new or legacy attention names) in our names and shapes."""
    inverse = {theirs: ours for ours, theirs in vae_key_map(config).items()}
    out = {}
    for key, value in state.items():
        for old, new in LEGACY_ATTENTION.items():
            key = key.replace(f".mid_block.attentions.0.{old}.", f".mid_block.attentions.0.{new}.")
        ours = inverse.get(key, key)
        out[ours] = value[:, :, None, None] if _is_projection(key) and value.ndim == 2 else value
    return out


# ----- configs ------------------------------------------------------------------------------


def vae_config_to_diffusers(config: AutoencoderConfig, sample_size: int) -> dict[str, Any]:
    """diffusers' ``vae/config.json`` for our KL autoencoder (``sample_size``: the image side)."""
    if config.regularizer != "kl":
        raise ConversionError(f"only KL autoencoders export to diffusers' AutoencoderKL; this one is "
                              f"regularizer={config.regularizer!r}")
    levels = len(config.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.30.0",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [config.base_channels * m for m in config.channel_mult],
        "layers_per_block": config.num_res_blocks,
        "latent_channels": config.z_channels,
        "norm_num_groups": config.norm_groups,
        "act_fn": "silu",
        "sample_size": sample_size,
        "scaling_factor": config.scale_factor,
        "force_upcast": True,
    }


def vae_config_from_diffusers(cfg: Mapping[str, Any], where: str = "vae/config.json") -> AutoencoderConfig:
    """Our :class:`AutoencoderConfig` for a diffusers AutoencoderKL config."""
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConversionError(f"{where}: _class_name={cfg['_class_name']!r} is not supported (only AutoencoderKL)")
    off = {"act_fn": "silu", "use_quant_conv": True, "use_post_quant_conv": True,
           "mid_block_add_attention": True, "shift_factor": None, "latents_mean": None, "latents_std": None}
    for name, value in off.items():
        if cfg.get(name, value) != value:
            raise ConversionError(f"{where}: {name}={cfg[name]!r} is not supported (only {value!r})")
    channels = list(cfg.get("block_out_channels", [64]))
    levels = len(channels)
    down = list(cfg.get("down_block_types", ["DownEncoderBlock2D"] * levels))
    up = list(cfg.get("up_block_types", ["UpDecoderBlock2D"] * levels))
    if down != ["DownEncoderBlock2D"] * levels or up != ["UpDecoderBlock2D"] * levels:
        raise ConversionError(f"{where}: block types {down} / {up} are not supported (only "
                              "DownEncoderBlock2D / UpDecoderBlock2D, one per level)")
    base = channels[0]
    if any(c % base for c in channels):
        raise ConversionError(f"{where}: block_out_channels={channels} are not multiples of the first")
    try:
        return AutoencoderConfig(
            in_channels=int(cfg.get("in_channels", 3)), out_channels=int(cfg.get("out_channels", 3)),
            base_channels=base, channel_mult=tuple(c // base for c in channels),
            num_res_blocks=int(cfg.get("layers_per_block", 1)), z_channels=int(cfg.get("latent_channels", 4)),
            norm_groups=int(cfg.get("norm_num_groups", 32)),
            scale_factor=float(cfg.get("scaling_factor", SD_SCALE_FACTOR)),
        )
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err


def vae_config_from_ldm(state: Mapping[str, torch.Tensor], source: str,
                        scale_factor: float = SD_SCALE_FACTOR) -> AutoencoderConfig:
    """Our :class:`AutoencoderConfig` read off an original-layout first-stage state dict."""
    for key in ("encoder.conv_in.weight", "decoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight"):
        if key not in state:
            raise ConversionError(f"{source!r}: the autoencoder has no {'first_stage_model.' + key!r}; the "
                                  "file is truncated or not a latent diffusion checkpoint")
    base, in_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    mults = []
    for level in levels:
        key = f"encoder.down.{level}.block.0.conv1.weight"
        if key not in state:
            raise ConversionError(f"{source!r}: the autoencoder has no {'first_stage_model.' + key!r}")
        mults.append(state[key].shape[0] // base)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    z_channels = state["decoder.conv_in.weight"].shape[1]
    vq = "quantize.embedding.weight" in state
    try:
        return AutoencoderConfig(
            in_channels=in_channels, out_channels=state["decoder.conv_out.weight"].shape[0],
            base_channels=base, channel_mult=tuple(mults), num_res_blocks=len(blocks), z_channels=z_channels,
            regularizer="vq" if vq else "kl",
            codebook_size=state["quantize.embedding.weight"].shape[0] if vq else 8192,
            scale_factor=scale_factor,
        )
    except ValueError as err:
        raise ConversionError(f"{source!r}: the autoencoder read from this file is not valid: {err}") from err


__all__ = [
    "SD_SCALE_FACTOR",
    "vae_config_from_diffusers",
    "vae_config_from_ldm",
    "vae_config_to_diffusers",
    "vae_from_diffusers",
    "vae_key_map",
    "vae_key_to_diffusers",
    "vae_shapes",
    "vae_to_diffusers",
]
