"""Write a trained model folder as a shipped one: fp16 safetensors plus how it was trained.

    python scripts/ship_model.py runs/emoji-inpaint/final models/emoji-inpaint-64 \
        --training '{"diffusion": {"config": "configs/emoji-inpaint.yaml", "steps": STEPS, "wall_minutes": MIN}}' \
        --data "emoji 16.0 (npm emoji-datasource-twitter), Twitter base emoji"

The source's ``model_index.json`` fields (e.g. ``training_steps``) are kept; ``--training`` and
``--data`` are added to it, and ``--training-steps`` replaces the run's own count for a run that
started from another model (``init_from``). ``--autoencoder`` ships a decoder fine-tune
(``ldm train autoencoder`` with ``train: decoder``) in place of SRC's autoencoder, after checking
that it makes the same latents. The destination must not exist (written atomically). Check the
fp16 copy with ``ldm eval`` before shipping it: the model card's figures are of the fp16 folder.

SRC may also be an autoencoder folder alone (``ldm train autoencoder``'s ``final/``): it is
written as fp16 ``autoencoder.json`` + ``autoencoder.safetensors``, a stage 1 that stage-2
configs can name on any machine (``--training`` / ``--data`` do not apply to it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder, load_autoencoder
from latent_diffusion.io import atomic_directory, save_module
from latent_diffusion.model.folder import read_index
from latent_diffusion.pipelines import DiffusionComponents, load_components, save_components
from latent_diffusion.training.autoencoder import ENCODER_SIDE

# model_index.json fields save_components writes itself.
STRUCTURAL = {"format", "version", "resolution", "autoencoder", "unet", "conditioner", "diffusion",
              "image_condition", "low_res_factor"}


def with_decoder_of(components: DiffusionComponents, folder: Path) -> DiffusionComponents:
    """``components`` with the autoencoder of ``folder``, a ``train: decoder`` fine-tune of its own.

    Refused unless the new autoencoder makes the same latents at fp16 (encoder weights and
    scale factor): a UNet only works on the latents it was trained on.
    """
    new: Autoencoder = load_autoencoder(folder)
    old = components.autoencoder
    if new.config.scale_factor != old.config.scale_factor:
        raise ValueError(f"{folder}: scale factor {new.config.scale_factor} is not the model's "
                         f"{old.config.scale_factor}; ship a decoder fine-tune (train: decoder) of this model's autoencoder")
    old_state, new_state = old.state_dict(), new.state_dict()
    changed = [k for k in old_state if k.split(".")[0] in ENCODER_SIDE
               and not torch.equal(old_state[k].half(), new_state[k].half())]
    if changed:
        raise ValueError(f"{folder}: its encoder differs from the model's ({changed[0]}, ...); the UNet would "
                         "see other latents. Ship a decoder fine-tune (train: decoder) of this model's autoencoder")
    return dataclasses.replace(components, autoencoder=new)


def ship_autoencoder(src: Path, dst: Path) -> None:
    """Write the autoencoder folder ``src`` as an fp16 folder ``dst`` (atomically)."""
    autoencoder = load_autoencoder(src)
    with atomic_directory(dst) as tmp:
        save_module(autoencoder.half(), autoencoder.config, tmp, "autoencoder")
    size = sum(p.stat().st_size for p in dst.iterdir()) / 2**20
    print(f"wrote {dst} ({size:.1f} MB, fp16 autoencoder)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a model folder, e.g. runs/<name>/final")
    parser.add_argument("dst", type=Path, help="the folder to create, e.g. models/<name>")
    parser.add_argument("--training", type=json.loads, default=None, help="JSON: stages, configs, steps, minutes")
    parser.add_argument("--data", default=None, help="one line: the data it was trained on")
    parser.add_argument("--autoencoder", type=Path, default=None,
                        help="ship this decoder fine-tune (train: decoder) of SRC's autoencoder in its place")
    parser.add_argument("--training-steps", type=int, default=None,
                        help="UNet steps in all, when the run started from another model's weights "
                             "(init_from): the run itself counts only its own")
    args = parser.parse_args()
    if args.training_steps is not None and args.training_steps < 1:
        parser.error(f"--training-steps {args.training_steps} must be >= 1")
    if args.dst.exists():
        parser.error(f"{args.dst} exists; remove it or choose another destination")
    if (args.src / "autoencoder.json").is_file() and not (args.src / "model_index.json").is_file():
        ship_autoencoder(args.src, args.dst)
        return
    try:  # the library's own checks: one line naming what is wrong with the folder
        index = read_index(args.src)
        components = load_components(args.src)
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"cannot load {args.src}: {err}")
    if args.autoencoder is not None:
        try:
            components = with_decoder_of(components, args.autoencoder)
        except (OSError, ValueError, KeyError) as err:
            parser.error(f"--autoencoder: {err}")
    extra = {k: v for k, v in index.items() if k not in STRUCTURAL}
    if args.training is not None:
        extra["training"] = args.training
    if args.data is not None:
        extra["data"] = args.data
    if args.training_steps is not None:
        extra["training_steps"] = args.training_steps
    save_components(components, args.dst, dtype=torch.float16, extra=extra)
    size = sum(p.stat().st_size for p in args.dst.iterdir()) / 2**20
    print(f"wrote {args.dst} ({size:.1f} MB, fp16)")


if __name__ == "__main__":
    main()
