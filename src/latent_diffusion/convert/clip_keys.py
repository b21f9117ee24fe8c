"""The CLIP text encoder in its three layouts, and the conditioner config that goes with it.

- Ours: the conditioner holds transformers' ``CLIPTextModel`` as ``encoder.model``; with
  transformers 5 its keys start at ``embeddings.``/``encoder.``/``final_layer_norm.``.
- Hugging Face files (diffusers' ``text_encoder/``, SD 1.x single files under
  ``cond_stage_model.transformer.``): the same with a ``text_model.`` prefix (older files), or
  without it (files written by transformers 5).
- OpenCLIP (SD 2.x single files, ``cond_stage_model.model.``): one fused ``in_proj`` per attention,
  ``resblocks``, ``ln_1``/``ln_2``, ``c_fc``/``c_proj``, ``positional_embedding`` as a bare tensor.

SD 2.x uses the penultimate layer's output (then the final LayerNorm). Like diffusers, the import
drops the unused last block and runs the shorter model to its end, which is the same function
(``clip_layer="last"`` on ``layers - 1`` blocks); the export does the same for a conditioner
configured with ``clip_layer="penultimate"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from latent_diffusion.conditioning import ConditionerConfig
from latent_diffusion.conditioning.clip import END_ID, START_ID, VOCAB_SIZE
from latent_diffusion.convert.errors import ConversionError

OURS_PREFIX = "encoder.model."
HF_PREFIX = "text_model."
HEAD_WIDTH = 64  # OpenAI CLIP and OpenCLIP text towers both use 64-wide heads
LAYER_NORM_EPS = 1e-5
OPENCLIP_RENAMES = (
    ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."), ("attn.out_proj.", "self_attn.out_proj."),
)
# Tensors of the source layouts that a text encoder for diffusion does not use.
IGNORED = re.compile(r"(^|\.)(position_ids|logit_scale|text_projection(\.weight)?|attn_mask)$")


def strip_hf_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face CLIPTextModel state dict with or without ``text_model.``, without unused tensors."""
    return {key.removeprefix(HF_PREFIX): value for key, value in state.items() if not IGNORED.search(key)}


def num_layers(state: Mapping[str, torch.Tensor]) -> int:
    """Number of transformer blocks in a (prefix-free) Hugging Face CLIP text state dict."""
    return len({m.group(1) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})


def drop_last_layer(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without its last transformer block (SD 2.x's penultimate-layer output)."""
    last = f"encoder.layers.{num_layers(state) - 1}."
    return {k: v for k, v in state.items() if not k.startswith(last)}


def openclip_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP text tower (prefix removed) as a prefix-free Hugging Face CLIPTextModel state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if IGNORED.search(key):
            continue
        if key == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["embeddings.position_embedding.weight"] = value
        elif key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final."):]] = value
        elif (m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", key)):
            layer, rest = f"encoder.layers.{m.group(1)}.", m.group(2)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight or bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{layer}self_attn.{name}.{kind}"] = part
                continue
            for old, new in OPENCLIP_RENAMES:
                if rest.startswith(old):
                    out[layer + new + rest[len(old):]] = value
                    break
            else:
                out[key] = value  # unknown: left for the strict check to report
        else:
            out[key] = value
    return out


def hf_to_openclip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`openclip_to_hf` (writes SD 2.x-style text towers, e.g. for tests)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key[len("final_layer_norm."):]] = value
        elif (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)):
            layer, rest = f"transformer.resblocks.{m.group(1)}.", m.group(2)
            if (p := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)):
                fused.setdefault(f"{layer}attn.in_proj_{p.group(2)}", {})[p.group(1)] = value
                continue
            for old, new in OPENCLIP_RENAMES:
                if rest.startswith(new):
                    out[layer + old + rest[len(new):]] = value
                    break
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def clip_config_from_hf_state(state: Mapping[str, torch.Tensor], source: str, *, activation: str,
                              pad_token_id: int) -> ConditionerConfig:
    """A ``kind="clip"`` conditioner config read off a prefix-free HF CLIP text state dict."""
    for key in ("embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
                "encoder.layers.0.mlp.fc1.weight"):
        if key not in state:
            raise ConversionError(f"{source!r}: the text encoder has no {key!r}; it is truncated or not CLIP")
    vocab, hidden = state["embeddings.token_embedding.weight"].shape
    if vocab != VOCAB_SIZE:
        raise ConversionError(f"{source!r}: the text encoder has {vocab} token embeddings; CLIP's BPE "
                              f"vocabulary (the only tokenizer supported) has {VOCAB_SIZE}")
    return _clip_config(
        hidden=int(hidden), layers=num_layers(state), heads=int(hidden) // HEAD_WIDTH,
        intermediate=int(state["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_length=int(state["embeddings.position_embedding.weight"].shape[0]),
        activation=activation, pad_token_id=pad_token_id, where=source,
    )


def _clip_config(*, hidden: int, layers: int, heads: int, intermediate: int, max_length: int,
                 activation: str, pad_token_id: int, where: str) -> ConditionerConfig:
    try:
        return ConditionerConfig(
            kind="clip", max_length=max_length, clip_hidden=hidden, clip_layers=layers, clip_heads=heads,
            clip_intermediate=intermediate, clip_layer="last", clip_activation=activation,
            clip_pad_token_id=pad_token_id,
        )
    except ValueError as err:
        raise ConversionError(f"{where}: the text encoder is not supported: {err}") from err


def clip_config_from_transformers(cfg: Mapping[str, Any], pad_token_id: int,
                                  where: str = "text_encoder/config.json") -> ConditionerConfig:
    """A conditioner config from a transformers ``CLIPTextConfig`` (a diffusers ``text_encoder/``)."""
    if cfg.get("model_type", "clip_text_model") != "clip_text_model":
        raise ConversionError(f"{where}: model_type={cfg['model_type']!r} is not supported (only "
                              "clip_text_model, the text encoder of SD 1.x/2.x)")
    if int(cfg.get("vocab_size", VOCAB_SIZE)) != VOCAB_SIZE:
        raise ConversionError(f"{where}: vocab_size={cfg['vocab_size']} is not CLIP's {VOCAB_SIZE}")
    eps = float(cfg.get("layer_norm_eps", LAYER_NORM_EPS))
    if abs(eps - LAYER_NORM_EPS) > 1e-12:
        raise ConversionError(f"{where}: layer_norm_eps={eps} is not supported (only {LAYER_NORM_EPS})")
    activation = cfg.get("hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        raise ConversionError(f"{where}: hidden_act={activation!r} is not supported (quick_gelu or gelu)")
    return _clip_config(
        hidden=int(cfg.get("hidden_size", 512)), layers=int(cfg.get("num_hidden_layers", 12)),
        heads=int(cfg.get("num_attention_heads", 8)), intermediate=int(cfg.get("intermediate_size", 2048)),
        max_length=int(cfg.get("max_position_embeddings", 77)), activation=activation,
        pad_token_id=pad_token_id, where=where,
    )


def clip_to_transformers_config(config: ConditionerConfig) -> dict[str, Any]:
    """transformers' ``text_encoder/config.json`` for a CLIP conditioner (penultimate: one block less)."""
    layers = config.clip_layers - (1 if config.clip_layer == "penultimate" else 0)
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": config.clip_hidden,
        "intermediate_size": config.clip_intermediate,
        "projection_dim": config.clip_hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": config.clip_heads,
        "max_position_embeddings": config.max_length,
        "hidden_act": config.clip_activation,
        "layer_norm_eps": LAYER_NORM_EPS,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "pad_token_id": config.clip_pad_token_id,
        "bos_token_id": START_ID,
        "eos_token_id": END_ID,
        "torch_dtype": "float32",
    }


def clip_to_hf_state(state: Mapping[str, torch.Tensor], config: ConditionerConfig) -> dict[str, torch.Tensor]:
    """Our conditioner state dict as a ``text_model.``-prefixed HF file (penultimate: last block dropped).

    The ``text_model.`` prefix is what every transformers version reads (version 5 strips it).
    """
    hf = {k[len(OURS_PREFIX):]: v for k, v in state.items() if k.startswith(OURS_PREFIX)}
    if config.clip_layer == "penultimate":
        hf = drop_last_layer(hf)
    return {HF_PREFIX + k: v for k, v in hf.items()}


def clip_from_hf_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A prefix-free HF CLIP text state dict in our conditioner's names."""
    return {OURS_PREFIX + k: v for k, v in state.items()}


__all__ = [
    "clip_config_from_hf_state",
    "clip_config_from_transformers",
    "clip_from_hf_state",
    "clip_to_hf_state",
    "clip_to_transformers_config",
    "drop_last_layer",
    "hf_to_openclip",
    "num_layers",
    "openclip_to_hf",
    "strip_hf_prefix",
]
