"""Stable Diffusion and diffusers interoperability: import SD 1.x/2.x checkpoints, export to diffusers.

    from latent_diffusion.convert import convert
    convert("v1-5-pruned-emaonly.safetensors", "models/sd15")        # SD single file -> ours
    convert("stable-diffusion-2-1", "models/sd21", prediction="v")    # diffusers folder -> ours
    convert("models/sd15", "sd15-diffusers")                          # ours -> diffusers folder
    convert("models/sd15", "models/sd15-taesd", tiny_decoder="taesd")  # ours + a tiny decoder -> ours

Our networks keep the original SD parameter names, so a single file maps onto them directly; the
key maps to and from diffusers' names live in ``unet_keys``, ``vae_keys`` and ``clip_keys``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from latent_diffusion.convert.detect import Format, detect_format
from latent_diffusion.convert.diffusers_folder import components_from_diffusers, save_diffusers
from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.convert.schedulers import matching_scheduler
from latent_diffusion.convert.single_file import components_from_single_file, read_checkpoint
from latent_diffusion.convert.tiny_decoder import read_tiny_decoder
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.model.folder import OWN_INDEX_KEYS, load_components, read_index, save_components

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_any(path: str | Path, prediction: str | None = None,
             resolution: int | None = None) -> tuple[DiffusionComponents, Format]:
    """Our model from any supported source, and the source's format (``resolution``: the native
    image side of a single file, which the file cannot say)."""
    fmt = detect_format(path)
    if fmt == "single_file":
        return components_from_single_file(path, prediction or "eps", resolution=resolution), fmt
    if resolution is not None:
        raise ConversionError(f"--resolution applies to single-file checkpoints; {str(path)!r} is a folder "
                              "whose configs give the resolution")
    if fmt == "diffusers":
        return components_from_diffusers(path, prediction), fmt
    if prediction is not None:
        raise ConversionError(f"--prediction applies to imported checkpoints; {str(path)!r} is a model folder "
                              "of this project, whose diffusion.json already says what it predicts")
    return load_components(path), fmt


def convert(src: str | Path, dst: str | Path, prediction: str | None = None,
            dtype: str = "fp32", resolution: int | None = None,
            tiny_decoder: str | Path | None = None) -> tuple[Format, Path]:
    """Convert ``src`` to ``dst``: an SD single file or diffusers folder becomes a model folder of
    ours; a model folder of ours becomes a diffusers folder. Returns (source format, dst).

    ``tiny_decoder`` (a ``train: tiny_decoder`` run's ``final/`` or a diffusers ``AutoencoderTiny``
    folder such as TAESD) is stored in the written model folder, where it decodes by default
    (autoencoder/tiny.py); with it, a model folder of ours becomes a model folder of ours. A
    diffusers export leaves a tiny decoder out (a diffusers pipeline has one ``vae``).

    ``dst`` is written under a temporary name and renamed at the end, so a failure never leaves
    a partial folder; an existing ``dst`` is refused rather than replaced.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    if prediction not in (None, "eps", "v"):
        raise ValueError(f"prediction={prediction!r} is not supported; choose 'eps' or 'v'")
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{str(dst)!r} already exists; choose a new destination or remove it first")
    if dst.resolve() == Path(src).resolve():
        raise ValueError("source and destination are the same path")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8):
        raise ValueError(f"resolution={resolution!r} must be an integer >= 8 (pixels)")
    tiny = None if tiny_decoder is None else read_tiny_decoder(tiny_decoder)
    components, fmt = load_any(src, prediction, resolution)
    if tiny is not None:
        try:
            components = dataclasses.replace(components, tiny_decoder=tiny)
        except ValueError as err:
            raise ConversionError(f"--tiny-decoder {str(tiny_decoder)!r} does not fit {str(src)!r}: {err}") from err
    noted = {} if tiny is None else {"tiny_decoder_from": Path(tiny_decoder).name}
    if fmt == "ours" and tiny is None:
        if components.tiny_decoder is not None:
            warnings.warn(f"{str(src)!r} has a tiny decoder; the diffusers folder gets the full VAE only (a "
                          "diffusers pipeline has one vae)", stacklevel=2)
        save_diffusers(components, dst, dtype=DTYPES[dtype])
    elif fmt == "ours":  # the same model with a tiny decoder: what its index said of it still holds
        kept = {key: value for key, value in read_index(src).items() if key not in OWN_INDEX_KEYS}
        save_components(components, dst, dtype=DTYPES[dtype], extra={**kept, **noted})
    else:
        save_components(components, dst, dtype=DTYPES[dtype],
                        extra={"converted_from": {"format": fmt, "path": Path(src).name}, **noted})
    return fmt, dst


__all__ = [
    "ConversionError",
    "DTYPES",
    "components_from_diffusers",
    "components_from_single_file",
    "convert",
    "detect_format",
    "load_any",
    "matching_scheduler",
    "read_checkpoint",
    "save_diffusers",
]
