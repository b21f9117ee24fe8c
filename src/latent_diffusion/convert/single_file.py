"""Original Stable Diffusion v1.x / v2.x single-file checkpoints (``.safetensors`` or ``.ckpt``).

A single file holds the three networks under fixed prefixes: ``model.diffusion_model.`` (UNet,
already in our names), ``first_stage_model.`` (VAE, already in our names) and
``cond_stage_model.`` (text encoder: ``transformer.`` in Hugging Face layout for SD 1.x,
``model.`` in OpenCLIP layout for SD 2.x). The architecture is read from tensor shapes: the
context width (768: SD 1.x, 1024: SD 2.x) and the projection shapes (SD 2.x's linear
``proj_in``). What shapes cannot say, whether the UNet predicts eps or v, comes from the caller
(``ldm convert --prediction v`` for the 768-pixel SD 2.x models).

``.ckpt`` files are read with ``torch.load(weights_only=True)`` only: a pickle that needs to
import code is refused with an error, never executed.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder
from latent_diffusion.conditioning import build_conditioner
from latent_diffusion.conditioning.clip import END_ID
from latent_diffusion.convert.build import build_with_state
from latent_diffusion.convert.clip_keys import (
    clip_config_from_hf_state,
    clip_from_hf_state,
    drop_last_layer,
    openclip_to_hf,
    strip_hf_prefix,
)
from latent_diffusion.convert.errors import ConversionError, check_state, first, shapes_of
from latent_diffusion.convert.unet_keys import unet_config_from_ldm, unet_shapes
from latent_diffusion.convert.vae_keys import vae_config_from_ldm, vae_shapes
from latent_diffusion.diffusion.schedule import DiffusionConfig, NoiseSchedule
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.unet import UNet

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
HF_TEXT_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
# Tensors a training checkpoint carries beside the networks: EMA copies, schedule buffers, loss
# modules. They are not part of the model and are skipped.
SKIPPED_PREFIXES = ("model_ema.", "first_stage_model.loss.", "cond_stage_model.model.visual.")
SKIPPED_KEYS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights", "model_ema.decay",
                "model_ema.num_updates"}
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SD_SCHEDULE = DiffusionConfig()  # scaled-linear betas 0.00085..0.012 over 1000 steps: every SD 1.x/2.x


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file checkpoint; a ``.ckpt`` is unpickled with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from latent_diffusion.io import load_tensors

        return load_tensors(path)
    if path.suffix not in SUFFIXES:
        raise ConversionError(f"{str(path)!r}: unknown checkpoint type {path.suffix!r}; expected one of "
                              f"{list(SUFFIXES)} or a model folder")
    try:
        data = _load_weights_only(path)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "global" not in text.lower():  # not a forbidden import: the bytes are not a pickle at all
            raise ConversionError(f"{str(path)!r} is not a readable PyTorch checkpoint: "
                                  f"{_reason(text)} (a file torch.save did not write, such as a plain "
                                  "pickle, is not read)") from err
        raise ConversionError(
            f"{str(path)!r}: refusing to unpickle: the file needs code beyond plain tensors to load "
            f"({_reason(text)}); only weights_only pickles are read. Convert it to .safetensors with "
            "a tool you trust, or get the .safetensors release of the model") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ConversionError(f"{str(path)!r} is not a readable PyTorch checkpoint: "
                              f"{_reason(str(err))}") from err
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]  # PyTorch Lightning's layout (the original SD releases)
    if not isinstance(data, Mapping):
        raise ConversionError(f"{str(path)!r} holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def _reason(text: str) -> str:
    """The informative line of torch's multi-line weights_only error, shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for number, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            # The reason follows the marker on its line, or (torch 2.6+) on the next non-empty one.
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not reason and number + 1 < len(lines):
                reason = lines[number + 1]
            return (reason or "unknown error")[:200]
    return (lines[0] if lines else "unknown error")[:200]


def _load_weights_only(path: Path) -> object:
    try:  # mmap: a 4 GB file is not read into memory twice
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def _take(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _check_layout(state: Mapping[str, torch.Tensor], source: str) -> None:
    keys = list(state)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        hint = ""
        if any(k.startswith(("down_blocks.", "conv_in.", "time_embedding.")) for k in keys):
            hint = " (this looks like a lone diffusers UNet; convert its whole diffusers folder)"
        elif any(k.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.0")) for k in keys):
            hint = " (this looks like SDXL, which is not supported)"
        raise ConversionError(f"{source!r}: unknown checkpoint layout: no '{UNET_PREFIX}*' keys; "
                              f"first keys are {first(sorted(keys))}{hint}. Expected an original "
                              "Stable Diffusion 1.x/2.x checkpoint")
    for prefix in (VAE_PREFIX, "cond_stage_model."):
        if not any(k.startswith(prefix) for k in keys):
            raise ConversionError(f"{source!r}: no '{prefix}*' keys: the checkpoint lacks a part of the "
                                  "model (a UNet-only file?); expected a full SD 1.x/2.x checkpoint")
    known = (UNET_PREFIX, VAE_PREFIX, HF_TEXT_PREFIX, OPENCLIP_PREFIX, *SKIPPED_PREFIXES)
    stray = [k for k in keys if not k.startswith(known) and k not in SKIPPED_KEYS]
    if stray:
        raise ConversionError(f"{source!r}: unexpected keys {first(stray)} beside the SD networks; "
                              "this is not a plain SD 1.x/2.x checkpoint")


def _text_state(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str, int, bool]:
    """(prefix-free HF state, activation, pad id, penultimate) of the checkpoint's text encoder."""
    openclip = _take(state, OPENCLIP_PREFIX)
    if openclip:  # SD 2.x: OpenCLIP ViT-H/14, gelu, pad id 0, penultimate layer
        return openclip_to_hf(openclip), "gelu", 0, True
    hf = strip_hf_prefix(_take(state, HF_TEXT_PREFIX))
    if not hf:
        raise ConversionError(f"{source!r}: the text encoder is neither under '{HF_TEXT_PREFIX}' (SD 1.x) "
                              f"nor under '{OPENCLIP_PREFIX}' (SD 2.x)")
    return hf, "quick_gelu", END_ID, False  # SD 1.x: OpenAI CLIP ViT-L/14, last layer


def _check_schedule(state: Mapping[str, torch.Tensor], source: str) -> None:
    """The file's own ``alphas_cumprod`` (when present) must be SD's schedule, the one we assume."""
    table = state.get("alphas_cumprod")
    if table is None:
        return
    ours = NoiseSchedule.from_config(SD_SCHEDULE).alphas_cumprod
    if table.shape != ours.shape or (table.double() - ours.double()).abs().max() > 1e-4:
        raise ConversionError(f"{source!r}: the checkpoint's alphas_cumprod is not Stable Diffusion's "
                              "scaled-linear schedule (0.00085..0.012, 1000 steps), which is not supported")


def components_from_single_file(path: str | Path, prediction: str = "eps", dtype: torch.dtype = torch.float32,
                                resolution: int | None = None) -> DiffusionComponents:
    """Our model (autoencoder, UNet, CLIP conditioner, schedule) from an SD 1.x/2.x single file.

    ``prediction``: what the UNet predicts ("eps", or "v" for SD 2.x 768 px models); the
    networks come back in ``dtype`` whatever the file stores. ``resolution``: the native image
    side (default 512, or 768 for SD 2.x v-prediction models, as released).
    """
    source = str(path)
    state = read_checkpoint(path)
    _check_layout(state, source)
    _check_schedule(state, source)
    unet_state = _take(state, UNET_PREFIX)
    unet_config = unet_config_from_ldm(unet_state, source)
    check_state(unet_shapes(unet_config), unet_state, source, lambda k: UNET_PREFIX + k, "UNet weights")
    vae_state = {k: v for k, v in _take(state, VAE_PREFIX).items() if not k.startswith("loss.")}
    vae_config = vae_config_from_ldm(vae_state, source)
    check_state(vae_shapes(vae_config), vae_state, source, lambda k: VAE_PREFIX + k, "autoencoder weights")

    hf, activation, pad_id, penultimate = _text_state(state, source)
    if penultimate:
        hf = drop_last_layer(hf)
    conditioner_config = clip_config_from_hf_state(hf, source, activation=activation, pad_token_id=pad_id)
    if unet_config.context_dim != conditioner_config.clip_hidden:
        raise ConversionError(f"{source!r}: the UNet cross-attends to {unet_config.context_dim}-wide tokens but "
                              f"the text encoder is {conditioner_config.clip_hidden} wide")
    conditioner = build_conditioner(conditioner_config)
    text_prefix = OPENCLIP_PREFIX if penultimate else HF_TEXT_PREFIX
    check_state(shapes_of(conditioner), clip_from_hf_state(hf), source,
                lambda k: text_prefix + k.removeprefix("encoder.model."), "text encoder weights")
    conditioner.load_state_dict(clip_from_hf_state(hf))
    conditioner.to(dtype)
    del hf

    unet = build_with_state(lambda: UNet(unet_config), unet_state, dtype)
    autoencoder = build_with_state(lambda: Autoencoder(vae_config), vae_state, dtype)
    sd2 = unet_config.use_linear_projection
    if resolution is None:
        resolution = 768 if sd2 and prediction == "v" else 512  # SD 2.x v-models are the 768 px ones
    diffusion = DiffusionConfig(**{**SD_SCHEDULE.to_dict(), "prediction": prediction})
    return DiffusionComponents(autoencoder, unet, conditioner, diffusion, resolution).eval()


__all__ = ["components_from_single_file", "read_checkpoint"]
