"""Make the README's sample grid: fixed prompts x (seeds, then styles) from a model folder, at default settings.

    python scripts/readme_grid.py                      # the shipped model -> docs/samples.png
    python scripts/readme_grid.py --model runs/x/final -o grid.png --scale 3

Each row is one prompt (written at its left). The first columns are the bare prompt with seeds
0-3 (does the drawing change with the noise?), the next ones the prompt with each style's phrase
appended ("red apple, flat style"), seed 0 (does it follow the style asked?); ``--no-styles`` keeps
only the seed columns (for models without style words). Images are enlarged with nearest-neighbour
sampling (to 128 px cells by default) so that the model's pixels stay visible. The same command
always makes the same picture (the seeds are fixed), so a change in it is a change in the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from latent_diffusion.data.emoji_styles.captions import style_phrase
from latent_diffusion.data.emoji_styles.styles import STYLES
from latent_diffusion.pipelines import TextToImage

PROMPTS = ("grinning face", "red apple", "cat face", "pile of poo", "thumbs up", "fire", "red heart", "rocket")
SEEDS = (0, 1, 2, 3)
LABEL_WIDTH = 120
HEADER = 18
PAD = 4
CELL = 128  # default cell size in px


def columns(styles: bool) -> list[tuple[str, str, int]]:
    """(header, prompt suffix, seed) of each column."""
    cells = [(f"seed {seed}", "", seed) for seed in SEEDS]
    if styles:
        cells += [(style_phrase(style).removesuffix(" style"), f", {style_phrase(style)}", 0) for style in STYLES]
    return cells


def make_grid(pipe: TextToImage, prompts: tuple[str, ...], cells: list[tuple[str, str, int]],
              scale: int | None) -> Image.Image:
    """One row per prompt, one column per (suffix, seed), default sampling settings; ``scale``
    None: 128 px cells."""
    size = pipe.native_size * (scale or max(1, CELL // pipe.native_size))
    grid = Image.new("RGB", (LABEL_WIDTH + len(cells) * (size + PAD) + PAD,
                             HEADER + len(prompts) * (size + PAD) + PAD), "white")
    draw = ImageDraw.Draw(grid)
    for col, (header, _, _) in enumerate(cells):
        draw.text((LABEL_WIDTH + PAD + col * (size + PAD), 3), header, fill="black")
    for row, prompt in enumerate(prompts):
        top = HEADER + PAD + row * (size + PAD)
        draw.text((PAD, top + size // 2 - 6), prompt, fill="black")
        for col, (_, suffix, seed) in enumerate(cells):
            image = pipe(prompt + suffix, seed=seed, progress=False)[0]
            grid.paste(image.resize((size, size), Image.Resampling.NEAREST), (LABEL_WIDTH + PAD + col * (size + PAD), top))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped default model)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/samples.png"))
    parser.add_argument("--scale", type=int, default=None,
                        help=f"enlargement factor (default: {CELL} px cells, 2 for a 64 px model)")
    parser.add_argument("--no-styles", action="store_true", help="only the seed columns")
    args = parser.parse_args()
    cells = columns(not args.no_styles)
    grid = make_grid(TextToImage.from_pretrained(args.model), PROMPTS, cells, args.scale)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output} ({len(PROMPTS)} prompts x {len(cells)} columns)")


if __name__ == "__main__":
    main()
