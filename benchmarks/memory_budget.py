"""The memory estimate of ``pipelines/budget.py`` beside the measured peak, per image size.

Each size runs in a fresh process (peak RSS, ``ru_maxrss``, only grows): load the model, note the
RSS, generate one step, note the peak. The estimate should sit above the measured growth plus the
weights at every size; the ratio column says by how much.

    python benchmarks/memory_budget.py                         # the default model, 256..1024 px
    python benchmarks/memory_budget.py --model models/emoji-sr-x4 --sizes 256 512 --task upscale
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from latent_diffusion.hardware import describe_cpu


def measure(model: str | None, size: int, task: str, tiling: bool) -> dict:
    """Run one call in this process; returns RSS figures in bytes."""
    import torch
    from PIL import Image

    from latent_diffusion.pipelines.budget import estimate_memory
    from latent_diffusion.pipelines.text_to_image import TextToImage
    from latent_diffusion.pipelines.upscale import Upscale

    torch.set_num_threads(1)
    cls = Upscale if task == "upscale" else TextToImage
    pipe = cls.from_pretrained(model)
    if tiling:
        pipe.enable_vae_tiling()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if task == "upscale":
        side = size // pipe.factor
        pipe(Image.new("RGB", (side, side), "white"), steps=1, progress=False)
    else:
        pipe("red heart", size=size, steps=1, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = estimate_memory(pipe.components, size, 1, pipe.vae_tile)
    return {"size": size, "loaded": loaded, "peak": peak, "estimate": estimate.total, "weights": estimate.weights}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the task's shipped model)")
    parser.add_argument("--task", default="generate", choices=("generate", "upscale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--vae-tiling", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.model, args.child, args.task, args.vae_tiling)))
        return
    print(describe_cpu())
    print(f"{'size':>6s}{'loaded MB':>11s}{'peak MB':>10s}{'growth MB':>11s}{'estimate MB':>13s}{'est/(growth+w)':>16s}")
    for size in args.sizes:
        command = [sys.executable, __file__, "--task", args.task, "--child", str(size)]
        command += (["--model", args.model] if args.model else []) + (["--vae-tiling"] if args.vae_tiling else [])
        row = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        growth = row["peak"] - row["loaded"]
        mb = 2**20
        print(f"{size:6d}{row['loaded'] / mb:11.0f}{row['peak'] / mb:10.0f}{growth / mb:11.0f}"
              f"{row['estimate'] / mb:13.0f}{row['estimate'] / (growth + row['weights']):16.2f}")


if __name__ == "__main__":
    main()
