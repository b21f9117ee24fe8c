"""Make the README's super-resolution figure: validation emoji downscaled x4 and upscaled back.

    python scripts/upscale_grid.py                     # the shipped upscaler -> docs/upscale.png
    python scripts/upscale_grid.py --model runs/emoji-sr-x4/final -o sr.png --rows 8

Columns: the low-resolution input, bicubic upsampling (the baseline), the upscaler's decoder
output (``back_projection=0``), the upscaler as ``ldm upscale`` runs it (back-projected onto the
input), and the original. Rows are validation pictures spread evenly over the split (both styles,
every skin tone). Everything is enlarged with nearest-neighbour sampling so pixels stay visible;
fixed pictures and seeds make the same figure every time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from latent_diffusion.conditioning.image import degrade
from latent_diffusion.data import DataConfig, dataset_from_config
from latent_diffusion.pipelines import Upscale
from latent_diffusion.pixels import images_to_pil

COLUMNS = ("input", "bicubic", "model, raw", "model (default)", "original")
HEADER = 18
PAD = 4
CELL = 128


def make_grid(pipe: Upscale, rows: int) -> Image.Image:
    """``rows`` validation pictures, one per row, in the columns of :data:`COLUMNS`."""
    dataset = dataset_from_config(DataConfig(name="emoji", resolution=pipe.native_size), "validation")
    picked = torch.linspace(0, len(dataset) - 1, rows).round().long().tolist()
    originals = torch.stack([dataset[i]["image"] for i in picked])
    small = degrade(originals, pipe.factor)
    bicubic = F.interpolate(small, scale_factor=pipe.factor, mode="bicubic", align_corners=False).clamp(-1, 1)
    columns = [images_to_pil(small), images_to_pil(bicubic),
               [pipe(image, seed=i, progress=False, back_projection=0)[0] for i, image in enumerate(small)],
               [pipe(image, seed=i, progress=False)[0] for i, image in enumerate(small)],
               images_to_pil(originals)]
    grid = Image.new("RGB", (PAD + len(columns) * (CELL + PAD), HEADER + rows * (CELL + PAD) + PAD), "white")
    draw = ImageDraw.Draw(grid)
    for col, (title, images) in enumerate(zip(COLUMNS, columns)):
        left = PAD + col * (CELL + PAD)
        draw.text((left, 3), title, fill="black")
        for row, image in enumerate(images):
            grid.paste(image.resize((CELL, CELL), Image.Resampling.NEAREST), (left, HEADER + row * (CELL + PAD)))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="upscaler folder (default: the shipped one)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/upscale.png"))
    parser.add_argument("--rows", type=int, default=6, help="validation pictures to show (default 6)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    grid = make_grid(Upscale.from_pretrained(args.model), args.rows)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output} ({grid.size[0]}x{grid.size[1]})")


if __name__ == "__main__":
    main()
