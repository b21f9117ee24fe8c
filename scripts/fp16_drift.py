"""How much does shipping in fp16 change a model's images? Same prompts, seeds and settings, both folders.

    python scripts/fp16_drift.py runs/emoji32-anneal/final models/emoji-32 \
        --autoencoder runs/emoji32-decoder/final

REFERENCE is the fp32 run folder, SHIPPED its fp16 copy (``scripts/ship_model.py``); with
``--autoencoder`` the reference uses that autoencoder, as ``ship_model.py --autoencoder`` did.
Prints the mean and largest absolute difference in grey levels over the README grid's prompts and
``--seeds`` (default 0 1) at default settings, and the share of 8-bit values that differ at all.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
from readme_grid import PROMPTS

from latent_diffusion.autoencoder import load_autoencoder
from latent_diffusion.pipelines import TextToImage, load_components


def main() -> None:
    """Print the drift between the reference and the shipped folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="the fp32 model folder, e.g. runs/<name>/final")
    parser.add_argument("shipped", help="its fp16 copy, e.g. models/<name>")
    parser.add_argument("--autoencoder", default=None, help="the autoencoder folder shipped in the reference's place")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    reference = load_components(args.reference)
    if args.autoencoder:
        reference = dataclasses.replace(reference, autoencoder=load_autoencoder(args.autoencoder))
    pipes = TextToImage.from_pretrained(reference), TextToImage.from_pretrained(args.shipped)
    diffs = []
    for seed in args.seeds:
        a, b = (np.stack([np.asarray(image, np.int16) for image in pipe(list(PROMPTS), seed=seed, progress=False)])
                for pipe in pipes)
        diffs.append(np.abs(a - b))
    d = np.concatenate(diffs)
    print(f"{len(d)} images: mean {d.mean():.3f} grey levels, max {d.max()}, {100 * (d > 0).mean():.1f}% of values differ")


if __name__ == "__main__":
    main()
