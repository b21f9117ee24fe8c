"""Write a trained model folder as a shipped one: fp16 safetensors plus how it was trained.

    python scripts/ship_model.py runs/emoji-sr-x4/final models/emoji-sr-x4 \
        --training '{"diffusion": {"config": "configs/emoji-sr-x4.yaml", "steps": 750, "wall_minutes": 24}}' \
        --data "emoji 16.0 (npm emoji-datasource-google/-twitter)"

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
    index = json.loads((args.src / "model_index.json").read_text())
    extra = {k: v for k, v in index.items() if k not in STRUCTURAL}
    if args.training is not None:
        extra["training"] = args.training
    if args.data is not None:
        extra["data"] = args.data
    save_components(load_components(args.src), args.dst, dtype=torch.float16, extra=extra)
    size = sum(p.stat().st_size for p in args.dst.iterdir()) / 2**20
    print(f"wrote {args.dst} ({size:.1f} MB, fp16)")


if __name__ == "__main__":
    main()
