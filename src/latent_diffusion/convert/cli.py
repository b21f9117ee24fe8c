"""``ldm convert SRC DST``: Stable Diffusion / diffusers checkpoints in, or this project's out.

    ldm convert v1-5-pruned-emaonly.safetensors models/sd15      # SD single file -> model folder
    ldm convert v2-1_768-ema-pruned.ckpt models/sd21 --prediction v
    ldm convert ./stable-diffusion-2-1-base models/sd21-base     # diffusers folder -> model folder
    ldm convert models/sd15 sd15-diffusers                       # model folder -> diffusers folder
    ldm convert models/sd15 models/sd15-taesd --tiny-decoder ./taesd   # + a tiny decoder -> model folder
    ldm generate "a lighthouse at dusk" --model models/sd15

The source format is detected. ``.ckpt`` files are only read as plain tensors (never as code).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``ldm convert`` to the ``ldm`` parser."""
    parser = subparsers.add_parser("convert", help="import SD / diffusers checkpoints, export to diffusers",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="SD .safetensors/.ckpt, a diffusers folder, or a model folder")
    parser.add_argument("dst", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--prediction", choices=("eps", "v"), default=None,
                        help="what the UNet predicts; single files cannot say (default eps; SD 2.x 768 px "
                             "models need v), diffusers folders say it in their scheduler config")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="dtype of the written weights (default fp32)")
    parser.add_argument("--resolution", type=int, default=None, metavar="PIXELS",
                        help="native image side of a single-file model (default 512; 768 for SD 2.x "
                             "with --prediction v)")
    parser.add_argument("--tiny-decoder", type=Path, default=None, metavar="DIR",
                        help="also store this tiny decoder in the written model folder, where it decodes by "
                             "default (ldm generate --decoder full switches back): a `train: tiny_decoder` run's "
                             "final/ or a diffusers AutoencoderTiny (TAESD) folder")
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Convert and print one line saying what was written."""
    from latent_diffusion.convert import convert

    start = time.perf_counter()
    fmt, dst = convert(args.src, args.dst, prediction=args.prediction, dtype=args.dtype,
                       resolution=args.resolution, tiny_decoder=args.tiny_decoder)
    to_diffusers = fmt == "ours" and args.tiny_decoder is None
    kind = "diffusers folder" if to_diffusers else "model folder (ldm generate --model " + str(dst) + ")"
    print(f"converted {fmt.replace('_', ' ')} {str(args.src)!r} -> {kind} {str(dst)!r} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
