"""Write a trained model folder as a shipped one: fp16 safetensors plus how it was trained.

    python scripts/ship_model.py runs/emoji-inpaint/final models/emoji-inpaint-64 \
        --training '{"diffusion": {"config": "configs/emoji-inpaint.yaml", "steps": STEPS, "wall_minutes": MIN}}' \
        --data "emoji 16.0 (npm emoji-datasource-twitter), Twitter base emoji"

The source's ``model_index.json`` fields (e.g. ``training_steps``) are kept; ``--training`` and
``--data`` are added to it. The destination must not exist (written atomically). Check the
fp16 copy with ``ldm eval`` before shipping it: the model card's figures are of the fp16 folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from latent_diffusion.pipelines import load_components, save_components
from latent_diffusion.pipelines.components import read_index

# model_index.json fields save_components writes itself.
STRUCTURAL = {"format", "version", "resolution", "autoencoder", "unet", "conditioner", "diffusion",
              "image_condition", "low_res_factor"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a model folder, e.g. runs/<name>/final")
    parser.add_argument("dst", type=Path, help="the folder to create, e.g. models/<name>")
    parser.add_argument("--training", type=json.loads, default=None, help="JSON: stages, configs, steps, minutes")
    parser.add_argument("--data", default=None, help="one line: the data it was trained on")
    args = parser.parse_args()
    if args.dst.exists():
        parser.error(f"{args.dst} exists; remove it or choose another destination")
    try:  # the library's own checks: one line naming what is wrong with the folder
        index = read_index(args.src)
        components = load_components(args.src)
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"cannot load {args.src}: {err}")
    extra = {k: v for k, v in index.items() if k not in STRUCTURAL}
    if args.training is not None:
        extra["training"] = args.training
    if args.data is not None:
        extra["data"] = args.data
    save_components(components, args.dst, dtype=torch.float16, extra=extra)
    size = sum(p.stat().st_size for p in args.dst.iterdir()) / 2**20
    print(f"wrote {args.dst} ({size:.1f} MB, fp16)")


if __name__ == "__main__":
    main()
