"""A tiny decoder from either of its homes: a ``train: tiny_decoder`` run's ``final/`` (or a model
folder that has one), or a diffusers ``AutoencoderTiny`` folder (TAESD: ``config.json`` and
``diffusion_pytorch_model.safetensors``; its encoder half is not used)."""

from __future__ import annotations

from pathlib import Path

from latent_diffusion.autoencoder.tiny import (
    TinyDecoder,
    tiny_decoder_config_from_diffusers,
    tiny_decoder_state_from_diffusers,
)
from latent_diffusion.convert.diffusers_folder import _load_part, _read_json
from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.io import load_state_strict
from latent_diffusion.model.folder import load_tiny_decoder


def read_tiny_decoder(folder: str | Path) -> TinyDecoder:
    """The :class:`TinyDecoder` stored in ``folder`` (either layout above), float32, eval mode."""
    folder = Path(folder)
    if (folder / "tiny_decoder.json").is_file():
        return load_tiny_decoder(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"--tiny-decoder {str(folder)!r} holds neither tiny_decoder.json (a `train: "
                              "tiny_decoder` run's final/) nor config.json (a diffusers AutoencoderTiny folder)")
    config = _read_json(config_path)
    if config.get("_class_name") != "AutoencoderTiny":
        raise ConversionError(f"{str(config_path)!r} describes a {config.get('_class_name')!r}, not an "
                              "AutoencoderTiny (TAESD); pass a tiny autoencoder's folder")
    try:
        tiny = TinyDecoder(tiny_decoder_config_from_diffusers(config))
        state, where = _load_part(folder, "diffusion_pytorch_model")
        load_state_strict(tiny, tiny_decoder_state_from_diffusers(state), where)
    except ValueError as err:
        raise ConversionError(f"--tiny-decoder {str(folder)!r}: {err}") from err
    return tiny.float().eval()


__all__ = ["read_tiny_decoder"]
