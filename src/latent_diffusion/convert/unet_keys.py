"""The UNet between three namings: ours (= original LDM/SD), diffusers' UNet2DConditionModel, configs.

Our UNet's parameter names are those of the original ``openaimodel.py``, so an SD single-file
checkpoint needs only its ``model.diffusion_model.`` prefix stripped. diffusers regroups the same
tensors by resolution level (``down_blocks.{level}.resnets.{k}``) and renames the ResBlock layers;
every tensor keeps its shape. The map is computed key by key from two facts only: the number of
ResBlocks per level, and that a ``conv`` child of an output block is the upsampler.

The architecture itself is read from a diffusers ``config.json`` or, for single files, from the
tensor shapes (the number of heads is the one thing shapes cannot tell; see
:func:`unet_config_from_ldm`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.unet import UNet, UNetConfig

# ResBlock layers: (ours, diffusers' ResnetBlock2D).
RESBLOCK_RENAMES = (
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
)
DIFFUSERS_VERSION = "0.30.0"  # the oldest diffusers whose loader reads every field we write
SD2_HEAD_DIM = 64  # SD 2.x configs give num_head_channels=64; SD 1.x gives num_heads=8
SD1_NUM_HEADS = 8


def _resblock(rest: str, key: str) -> str:
    for ours, theirs in RESBLOCK_RENAMES:
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    raise KeyError(key)


def unet_key_to_diffusers(key: str, num_res_blocks: int) -> str:
    """The diffusers name of one of our UNet keys (KeyError for a key no UNet of ours has)."""
    head, _, rest = key.partition(".")
    if head == "time_embed":
        index, _, tail = rest.partition(".")
        return {"0": "time_embedding.linear_1.", "2": "time_embedding.linear_2."}[index] + tail
    if head == "label_emb":
        return "class_embedding." + rest
    if head == "time_cond_proj":
        return "time_embedding.cond_proj." + rest
    if head == "out":
        index, _, tail = rest.partition(".")
        return {"0": "conv_norm_out.", "2": "conv_out."}[index] + tail
    if head == "middle_block":
        index, _, tail = rest.partition(".")
        if index == "1":
            return "mid_block.attentions.0." + tail
        return {"0": "mid_block.resnets.0.", "2": "mid_block.resnets.1."}[index] + _resblock(tail, key)
    if head in ("input_blocks", "output_blocks"):
        block, layer, tail = rest.split(".", 2)
        block_index = int(block)
        if head == "input_blocks":
            if block_index == 0:
                if layer != "0":
                    raise KeyError(key)
                return "conv_in." + tail
            level, k = divmod(block_index - 1, num_res_blocks + 1)
            prefix = f"down_blocks.{level}"
            if tail.startswith("op."):
                return f"{prefix}.downsamplers.0.conv." + tail[3:]
        else:
            level, k = divmod(block_index, num_res_blocks + 1)
            prefix = f"up_blocks.{level}"
            if tail.startswith("conv."):  # the Upsample (a transformer has no "conv" child)
                return f"{prefix}.upsamplers.0.conv." + tail[5:]
        if layer == "0":
            return f"{prefix}.resnets.{k}." + _resblock(tail, key)
        if layer == "1":
            return f"{prefix}.attentions.{k}." + tail
    raise KeyError(key)


def unet_shapes(config: UNetConfig) -> dict[str, torch.Size]:
    """Our UNet's state-dict keys and shapes for ``config``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = UNet(config)
    return {key: value.shape for key, value in model.state_dict().items()}


def unet_key_map(config: UNetConfig) -> dict[str, str]:
    """Our key -> diffusers key for every tensor of a UNet with ``config``."""
    return {key: unet_key_to_diffusers(key, config.num_res_blocks) for key in unet_shapes(config)}


def unet_to_diffusers(state: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Our UNet state dict in diffusers' names (same tensors, no copies)."""
    mapping = unet_key_map(config)
    return {mapping[key]: value for key, value in state.items()}


def unet_from_diffusers(state: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in our names; keys diffusers has and we do not are kept as is,
    so the strict check that follows reports them as unexpected."""
    inverse = {theirs: ours for ours, theirs in unet_key_map(config).items()}
    return {inverse.get(key, key): value for key, value in state.items()}


# ----- configs ------------------------------------------------------------------------------


def _heads_per_level(config: UNetConfig) -> list[int]:
    return [config.heads_and_width(config.model_channels * m)[0] for m in config.channel_mult]


def unet_config_to_diffusers(config: UNetConfig, sample_size: int) -> dict[str, Any]:
    """diffusers' ``unet/config.json`` for our UNet (``sample_size``: the latent side)."""
    if config.context_dim is None:
        raise ConversionError("diffusers' StableDiffusionPipeline needs a text-conditioned UNet; this "
                              "UNet has context_dim=None")
    if not config.mid_attention:
        raise ConversionError("diffusers' UNet2DConditionModel always has a mid-block transformer; this "
                              "UNet has mid_attention=False and cannot be exported")
    if config.pooled_context:
        raise ConversionError("this UNet adds a pooled text embedding to its time embedding "
                              "(pooled_context=True), which diffusers' UNet2DConditionModel has no "
                              "equivalent of; it cannot be exported to a diffusers folder")
    levels = range(len(config.channel_mult))
    heads = _heads_per_level(config)
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": sample_size,
        "in_channels": config.in_channels + config.concat_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if i in config.attention_levels else "DownBlock2D"
                             for i in levels],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if i in config.attention_levels else "UpBlock2D"
                           for i in reversed(levels)],
        "block_out_channels": [config.model_channels * m for m in config.channel_mult],
        "layers_per_block": config.num_res_blocks,
        # diffusers' historical misnomer: "attention_head_dim" holds the number of heads.
        "attention_head_dim": heads[0] if config.head_dim is None else heads,
        "cross_attention_dim": config.context_dim,
        "transformer_layers_per_block": config.transformer_depth,
        "use_linear_projection": config.use_linear_projection,
        "resnet_time_scale_shift": "scale_shift" if config.use_scale_shift_norm else "default",
        "norm_num_groups": config.norm_groups,
        "norm_eps": 1e-5,
        "num_class_embeds": None if config.num_classes is None else config.num_classes + 1,
        "dropout": config.dropout,
        "act_fn": "silu",
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "center_input_sample": False,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "upcast_attention": False,
        "time_cond_proj_dim": config.time_cond_proj_dim,
    }


# diffusers options our UNet does not have, with the value that means "off".
_UNSUPPORTED_DEFAULTS = {
    "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu",
    "downsample_padding": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
    "time_embedding_type": "positional", "class_embed_type": None, "addition_embed_type": None,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "dual_cross_attention": False, "only_cross_attention": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None,
    "attention_type": "default", "class_embeddings_concat": False, "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None, "projection_class_embeddings_input_dim": None,
}


def _uniform(name: str, value: Any, count: int, where: str) -> Any:
    """An int (or a list of one repeated value) as one value; other lists are unsupported."""
    if isinstance(value, (list, tuple)):
        if len(value) != count or len(set(map(str, value))) != 1:
            raise ConversionError(f"{where}: {name}={value!r} varies per level, which this project's UNet "
                                  "does not support (one value for all levels)")
        return value[0]
    return value


def unet_config_from_diffusers(cfg: Mapping[str, Any], where: str = "unet/config.json") -> UNetConfig:
    """Our :class:`UNetConfig` for a diffusers ``UNet2DConditionModel`` config (SD 1.x/2.x family)."""
    if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ConversionError(f"{where}: _class_name={cfg['_class_name']!r} is not supported; only "
                              "UNet2DConditionModel (Stable Diffusion 1.x/2.x) converts")
    for name, off in _UNSUPPORTED_DEFAULTS.items():
        value = cfg.get(name, off)
        if value != off and not (isinstance(value, float) and isinstance(off, float) and abs(value - off) < 1e-12):
            raise ConversionError(f"{where}: {name}={value!r} is not supported by this project's UNet "
                                  f"(only {off!r}); this is not a Stable Diffusion 1.x/2.x UNet")
    channels = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    base = channels[0]
    if any(c % base for c in channels):
        raise ConversionError(f"{where}: block_out_channels={channels} are not multiples of the first")
    levels = len(channels)
    down = list(cfg.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]))
    up = list(cfg.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    known = {"CrossAttnDownBlock2D", "DownBlock2D"}
    if len(down) != levels or any(t not in known for t in down):
        raise ConversionError(f"{where}: down_block_types={down} is not supported; use CrossAttnDownBlock2D "
                              f"and DownBlock2D, one per block_out_channels entry")
    mirrored = [t.replace("Down", "Up") for t in reversed(down)]
    if up != mirrored:
        raise ConversionError(f"{where}: up_block_types={up} must mirror down_block_types ({mirrored})")
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise ConversionError(f"{where}: mid_block_type={mid!r} is not supported (only UNetMidBlock2DCrossAttn)")
    attention_levels = tuple(i for i, t in enumerate(down) if t.startswith("CrossAttn"))
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    num_heads, head_dim = _heads(heads, channels, attention_levels, where)
    shift = cfg.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise ConversionError(f"{where}: resnet_time_scale_shift={shift!r} is not supported")
    in_channels, out_channels = int(cfg.get("in_channels", 4)), int(cfg.get("out_channels", 4))
    if in_channels < out_channels:
        raise ConversionError(f"{where}: in_channels={in_channels} < out_channels={out_channels} is not supported")
    class_embeds = cfg.get("num_class_embeds")
    cond_proj = cfg.get("time_cond_proj_dim")  # a latent consistency model's guidance embedding
    try:
        return UNetConfig(
            in_channels=out_channels,
            out_channels=out_channels,
            concat_channels=in_channels - out_channels,  # inpainting: masked-image latent and mask
            model_channels=base,
            channel_mult=tuple(c // base for c in channels),
            num_res_blocks=int(_uniform("layers_per_block", cfg.get("layers_per_block", 2), levels, where)),
            attention_levels=attention_levels,
            num_heads=num_heads,
            head_dim=head_dim,
            transformer_depth=int(_uniform("transformer_layers_per_block",
                                           cfg.get("transformer_layers_per_block", 1), levels, where)),
            context_dim=int(_uniform("cross_attention_dim", cfg.get("cross_attention_dim", 1280), levels, where)),
            use_linear_projection=bool(cfg.get("use_linear_projection", False)),
            num_classes=None if class_embeds is None else int(class_embeds) - 1,
            use_scale_shift_norm=shift == "scale_shift",
            dropout=float(cfg.get("dropout", 0.0)),
            norm_groups=int(cfg.get("norm_num_groups", 32)),
            time_cond_proj_dim=None if cond_proj is None else int(cond_proj),
        )
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err


def _heads(heads: Any, channels: list[int], attention_levels: tuple[int, ...], where: str) -> tuple[int, int | None]:
    """(num_heads, head_dim) of our config from diffusers' per-level head counts."""
    if isinstance(heads, int):
        return heads, None
    heads = list(heads)
    if len(heads) != len(channels):
        raise ConversionError(f"{where}: attention_head_dim={heads} needs one entry per level")
    used = [*attention_levels, len(channels) - 1]  # the mid block uses the deepest level's heads
    counts = {heads[i] for i in used}
    widths = {channels[i] // heads[i] for i in used}
    if len(widths) == 1 and all(channels[i] % heads[i] == 0 for i in used):
        return SD1_NUM_HEADS, widths.pop()
    if len(counts) == 1:
        return counts.pop(), None
    raise ConversionError(f"{where}: attention_head_dim={heads} gives neither a constant head count nor a "
                          "constant head width, which this project's UNet needs")


def unet_config_from_ldm(state: Mapping[str, torch.Tensor], source: str) -> UNetConfig:
    """Our :class:`UNetConfig` read off the tensor shapes of an original-layout UNet state dict.

    Heads cannot be read from weights. The original configs tie them to the projection: SD 2.x
    (linear ``proj_in``, ``use_linear_in_transformer``) has 64-wide heads, SD 1.x (1x1-conv
    ``proj_in``) has 8 heads per transformer.
    """
    if "label_emb.0.0.weight" in state:
        raise ConversionError(f"{source!r}: this UNet has an SDXL-style 'label_emb.0.0' (ADM) embedding; "
                              "only Stable Diffusion 1.x/2.x checkpoints convert")
    for key in ("input_blocks.0.0.weight", "out.2.weight"):
        if key not in state:
            raise ConversionError(f"{source!r}: the UNet has no {key!r}; it is truncated or not an SD UNet")
    model_channels, in_total = state["input_blocks.0.0.weight"].shape[:2]
    out_channels = state["out.2.weight"].shape[0]
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    mults, attention_levels, res_counts, count = [], [], [], 0
    first_attention = None
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in state:
            res_counts.append(count)
            count = 0
            continue
        if count == 0:
            width = f"input_blocks.{i}.0.out_layers.3.weight"
            if width not in state:
                raise ConversionError(f"{source!r}: the UNet has no {'model.diffusion_model.' + width!r}")
            mults.append(state[width].shape[0] // model_channels)
            if f"input_blocks.{i}.1.norm.weight" in state:
                attention_levels.append(len(mults) - 1)
                first_attention = first_attention or f"input_blocks.{i}.1"
        count += 1
    res_counts.append(count)
    if len(set(res_counts)) != 1 or not mults:
        raise ConversionError(f"{source!r}: the UNet's input blocks ({res_counts} ResBlocks per level) do "
                              "not form the regular SD layout")
    mid = "middle_block.1" if "middle_block.1.norm.weight" in state else None
    probe = first_attention or mid
    context_dim, linear, depth = None, False, 1
    if probe is not None:
        to_k = state.get(f"{probe}.transformer_blocks.0.attn2.to_k.weight")
        context_dim = None if to_k is None else int(to_k.shape[1])
        linear = state[f"{probe}.proj_in.weight"].ndim == 2
        depth = len({m.group(1) for k in state
                     if (m := re.match(rf"{re.escape(probe)}\.transformer_blocks\.(\d+)\.", k))})
    first_res = f"input_blocks.{blocks[1]}.0"
    scale_shift = state[f"{first_res}.emb_layers.1.weight"].shape[0] == 2 * mults[0] * model_channels
    label = state.get("label_emb.weight")
    sd2 = linear
    try:
        return UNetConfig(
            in_channels=out_channels, out_channels=out_channels, concat_channels=in_total - out_channels,
            model_channels=model_channels, channel_mult=tuple(mults), num_res_blocks=res_counts[0],
            attention_levels=tuple(attention_levels), num_heads=SD1_NUM_HEADS,
            head_dim=SD2_HEAD_DIM if sd2 else None, transformer_depth=depth, context_dim=context_dim,
            use_linear_projection=linear, num_classes=None if label is None else label.shape[0] - 1,
            use_scale_shift_norm=scale_shift, mid_attention=mid is not None,
        )
    except ValueError as err:
        raise ConversionError(f"{source!r}: the UNet read from this file is not valid: {err}") from err


__all__ = [
    "unet_config_from_diffusers",
    "unet_config_from_ldm",
    "unet_config_to_diffusers",
    "unet_from_diffusers",
    "unet_key_map",
    "unet_key_to_diffusers",
    "unet_shapes",
    "unet_to_diffusers",
]
