"""diffusers Stable Diffusion folders: read one into our model, write our model as one.

Layout (what ``StableDiffusionPipeline.save_pretrained`` writes and ``from_pretrained`` reads)::

    model_index.json                 pipeline class and the class of each part
    unet/config.json  unet/diffusion_pytorch_model.safetensors
    vae/config.json   vae/diffusion_pytorch_model.safetensors
    text_encoder/config.json  text_encoder/model.safetensors      (transformers CLIPTextModel)
    tokenizer/vocab.json merges.txt tokenizer_config.json          (CLIP BPE; or tokenizer.json)
    scheduler/scheduler_config.json

Weights are read from safetensors (also ``*.fp16.safetensors`` variants and sharded
``*.safetensors.index.json``) or, for old folders, ``*.bin`` through ``weights_only`` unpickling.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.conditioning import build_conditioner
from latent_diffusion.conditioning.clip import END_ID, load_clip_bpe, write_hf_tokenizer_files
from latent_diffusion.convert.build import build_with_state
from latent_diffusion.convert.clip_keys import (
    clip_config_from_transformers,
    clip_from_hf_state,
    clip_to_hf_state,
    clip_to_transformers_config,
    strip_hf_prefix,
)
from latent_diffusion.convert.errors import ConversionError, check_state, shapes_of
from latent_diffusion.convert.schedulers import (
    consistency_from_scheduler_config,
    diffusion_from_scheduler_config,
    lcm_scheduler_config_for_export,
    scheduler_config_for_export,
)
from latent_diffusion.convert.unet_keys import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_from_diffusers,
    unet_key_map,
    unet_shapes,
    unet_to_diffusers,
)
from latent_diffusion.convert.vae_keys import (
    vae_config_from_diffusers,
    vae_config_to_diffusers,
    vae_from_diffusers,
    vae_key_map,
    vae_shapes,
    vae_to_diffusers,
)
from latent_diffusion.io import atomic_directory, atomic_write_text, save_tensors
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.unet import UNet

INDEX_FILE = "model_index.json"
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Pipelines whose parts are exactly the SD 1.x/2.x ones (extra parts such as a safety checker are
# ignored); SDXL's second text encoder and the like are refused.
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
             "LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline")
FOREIGN_PARTS = ("text_encoder_2", "tokenizer_2", "transformer", "prior", "image_encoder")
PAD_TOKENS = {"<|endoftext|>": END_ID}


def is_diffusers_folder(path: Path) -> bool:
    """True for a folder whose ``model_index.json`` names a diffusers pipeline class."""
    index = path / INDEX_FILE
    if not index.is_file():
        return False
    try:
        return "_class_name" in json.loads(index.read_text())
    except (json.JSONDecodeError, OSError):
        return False


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{str(path)!r} is missing; a diffusers SD folder needs {list(PARTS)}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{str(path)!r} must hold a JSON object")
    return data


def _weight_files(folder: Path, stem: str) -> list[Path]:
    """The weight file(s) of one part, preferring safetensors, full precision and unsharded."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    for name in (f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors.index.json"):
        if (folder / name).is_file():
            shards = sorted(set(_read_json(folder / name).get("weight_map", {}).values()))
            return [folder / shard for shard in shards]
    legacy = {"diffusion_pytorch_model": "diffusion_pytorch_model.bin", "model": "pytorch_model.bin"}[stem]
    if (folder / legacy).is_file():
        return [folder / legacy]
    raise ConversionError(f"{str(folder)!r} has no weights: expected {stem}.safetensors (or a .fp16 / "
                          f"sharded variant, or {legacy})")


def _load_part(folder: Path, stem: str) -> tuple[dict[str, torch.Tensor], str]:
    from latent_diffusion.convert.single_file import read_checkpoint

    files = _weight_files(folder, stem)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(read_checkpoint(path))
    return state, str(files[0]) if len(files) == 1 else f"{folder}/{stem}.*"


def _tokenizer_vocabulary(tokenizer: Path) -> tuple[dict[str, Any], Path]:
    """The token -> id table of a ``tokenizer/`` folder: ``vocab.json`` (the slow tokenizer's files),
    or the ``model.vocab`` of ``tokenizer.json``, which is all that recent transformers save."""
    vocab_path = tokenizer / "vocab.json"
    if vocab_path.is_file() or not (tokenizer / "tokenizer.json").is_file():
        return _read_json(vocab_path), vocab_path
    fast = tokenizer / "tokenizer.json"
    model = _read_json(fast).get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise ConversionError(f"{str(fast)!r} holds no BPE vocabulary (model.type BPE with model.vocab); "
                              "only CLIP's BPE tokenizer (SD 1.x/2.x) is supported")
    return model["vocab"], fast


def _pad_token_id(tokenizer: Path) -> int:
    """The pad id of a diffusers ``tokenizer/`` folder, after checking it is CLIP's vocabulary."""
    vocab, vocab_path = _tokenizer_vocabulary(tokenizer)
    ours = load_clip_bpe()[0]
    if len(vocab) != len(ours) or any(vocab.get(token) != i for i, token in enumerate(ours)):
        raise ConversionError(f"{str(vocab_path)!r} is not CLIP's BPE vocabulary (the only tokenizer "
                              "supported: the one of SD 1.x/2.x)")
    pad = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer / name).is_file():
            pad = _read_json(tokenizer / name).get("pad_token", pad)
            if pad is not None:
                break
    if isinstance(pad, dict):  # AddedToken serialized as an object
        pad = pad.get("content")
    if pad is None:
        return END_ID
    if pad not in vocab:
        raise ConversionError(f"{str(tokenizer)!r}: pad_token={pad!r} is not in the vocabulary")
    return int(vocab[pad])


def components_from_diffusers(folder: str | Path, prediction: str | None = None,
                              dtype: torch.dtype = torch.float32) -> DiffusionComponents:
    """Our model from a diffusers SD 1.x/2.x folder (``prediction`` overrides the scheduler's)."""
    folder = Path(folder)
    index = _read_json(folder / INDEX_FILE)
    name = index.get("_class_name")
    foreign = [p for p in FOREIGN_PARTS if index.get(p) not in (None, [None, None])]
    if name not in PIPELINES or foreign:
        raise ConversionError(f"{str(folder / INDEX_FILE)!r}: pipeline {name!r}{' with ' + str(foreign) if foreign else ''}"
                              f" is not supported; only {list(PIPELINES)} (Stable Diffusion 1.x/2.x)")

    unet_cfg = _read_json(folder / "unet" / "config.json")
    unet_config = unet_config_from_diffusers(unet_cfg, str(folder / "unet" / "config.json"))
    raw, source = _load_part(folder / "unet", "diffusion_pytorch_model")
    unet_state = unet_from_diffusers(raw, unet_config)
    names = unet_key_map(unet_config)
    check_state(unet_shapes(unet_config), unet_state, source, lambda k: names.get(k, k), "UNet weights")

    vae_cfg = _read_json(folder / "vae" / "config.json")
    vae_config = vae_config_from_diffusers(vae_cfg, str(folder / "vae" / "config.json"))
    raw, source = _load_part(folder / "vae", "diffusion_pytorch_model")
    vae_state = vae_from_diffusers(raw, vae_config)
    names = vae_key_map(vae_config)
    check_state(vae_shapes(vae_config), vae_state, source, lambda k: names.get(k, k), "autoencoder weights")

    pad_id = _pad_token_id(folder / "tokenizer")
    text_cfg = _read_json(folder / "text_encoder" / "config.json")
    conditioner_config = clip_config_from_transformers(text_cfg, pad_id, str(folder / "text_encoder" / "config.json"))
    if unet_config.context_dim != conditioner_config.clip_hidden:
        raise ConversionError(f"{str(folder)!r}: the UNet cross-attends to {unet_config.context_dim}-wide tokens "
                              f"but the text encoder is {conditioner_config.clip_hidden} wide")
    raw, source = _load_part(folder / "text_encoder", "model")
    text_state = clip_from_hf_state(strip_hf_prefix(raw))
    conditioner = build_conditioner(conditioner_config)
    check_state(shapes_of(conditioner), text_state, source,
                lambda k: "text_model." + k.removeprefix("encoder.model."), "text encoder weights")
    conditioner.load_state_dict(text_state)
    conditioner.to(dtype)

    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_cfg = _read_json(scheduler_path)
    diffusion = diffusion_from_scheduler_config(scheduler_cfg, prediction, str(scheduler_path))
    consistency = None
    if unet_config.time_cond_proj_dim is not None:  # a latent consistency model (LCM-distilled UNet)
        consistency = consistency_from_scheduler_config(scheduler_cfg, unet_config.time_cond_proj_dim,
                                                        str(scheduler_path))
    sample_size = unet_cfg.get("sample_size", 64)
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    resolution = int(sample_size) * vae_config.downsampling_factor
    unet = build_with_state(lambda: UNet(unet_config), unet_state, dtype)
    autoencoder = build_with_state(lambda: Autoencoder(vae_config), vae_state, dtype)
    return DiffusionComponents(autoencoder, unet, conditioner, diffusion, resolution, consistency=consistency).eval()


def _cast(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return dict(state)
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_diffusers(components: DiffusionComponents, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``components`` as a diffusers StableDiffusionPipeline folder (LatentConsistencyModelPipeline
    for a latent consistency model) atomically: the folder
    appears complete or not at all. ``dtype`` casts the stored weights (e.g. ``torch.float16``)."""
    conditioner = components.conditioner
    if conditioner.kind != "clip":
        raise ConversionError(f"diffusers' StableDiffusionPipeline needs a CLIP text encoder; this model's "
                              f"conditioner is kind={conditioner.kind!r}, which has no diffusers counterpart")
    unet, autoencoder = components.unet, components.autoencoder
    unet_cfg = unet_config_to_diffusers(unet.config, components.latent_size)
    vae_cfg = vae_config_to_diffusers(autoencoder.config, components.resolution)
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        for part in PARTS:
            (tmp / part).mkdir()
        _write_json(tmp / "unet" / "config.json", unet_cfg)
        save_tensors(tmp / "unet" / "diffusion_pytorch_model.safetensors",
                     _cast(unet_to_diffusers(unet.state_dict(), unet.config), dtype))
        _write_json(tmp / "vae" / "config.json", vae_cfg)
        save_tensors(tmp / "vae" / "diffusion_pytorch_model.safetensors",
                     _cast(vae_to_diffusers(autoencoder.state_dict(), autoencoder.config), dtype))
        _write_json(tmp / "text_encoder" / "config.json", clip_to_transformers_config(conditioner.config))
        save_tensors(tmp / "text_encoder" / "model.safetensors",
                     _cast(clip_to_hf_state(conditioner.state_dict(), conditioner.config), dtype),
                     metadata={"format": "pt"})
        write_hf_tokenizer_files(tmp / "tokenizer", conditioner.config.max_length, conditioner.config.clip_pad_token_id)
        consistency = components.consistency
        scheduler = (scheduler_config_for_export(components.diffusion) if consistency is None
                     else lcm_scheduler_config_for_export(components.diffusion, consistency))
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        _write_json(tmp / INDEX_FILE, {
            "_class_name": "StableDiffusionPipeline" if consistency is None else "LatentConsistencyModelPipeline",
            "_diffusers_version": "0.30.0",
            "feature_extractor": [None, None],
            "safety_checker": [None, None],
            "requires_safety_checker": False,
            "scheduler": ["diffusers", scheduler["_class_name"]],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        })
    return folder


__all__ = ["components_from_diffusers", "is_diffusers_folder", "save_diffusers"]
