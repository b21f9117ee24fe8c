"""Peak memory of SD 1.5-sized work at 512x512 on the CPU, with and without tiling and chunking.

Each case runs in a fresh subprocess and reports its peak resident set size (``ru_maxrss``) and
that of the weights alone, so the difference is what the computation itself needs:

- ``unet``: one UNet forward of a classifier-free-guidance batch (2 x 4 x 64 x 64 latents), with
  plain SDPA attention, and with queries chunked (``UNet.set_attention_chunk_size``);
- ``vae``: decoding one 512x512 image, whole and in 256-px latent tiles blended over 64 px
  (``autoencoder.tiling.decode_latents_tiled``).

    python benchmarks/sd_memory.py [--size 512] [--chunk 1024] [--tile 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

CASES = ("unet", "unet_chunked", "vae", "vae_tiled")


def rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(case: str, size: int, chunk: int, tile: int) -> dict[str, float]:
    """Build the network, note the peak so far, run the case, note the peak again."""
    latent = size // 8
    torch.manual_seed(0)
    with torch.no_grad():
        if case.startswith("unet"):
            from latent_diffusion.unet import UNet, UNetConfig

            model = UNet(UNetConfig(use_scale_shift_norm=False)).eval()
            if case == "unet_chunked":
                model.set_attention_chunk_size(chunk)
            x, context = torch.randn(2, 4, latent, latent), torch.randn(2, 77, 768)
            weights = rss_gib()
            start = time.perf_counter()
            model(x, torch.tensor([981.0, 981.0]), context=context)
        else:
            from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
            from latent_diffusion.autoencoder.tiling import decode_latents_tiled

            model = Autoencoder(AutoencoderConfig(scale_factor=0.18215)).eval()
            z = torch.randn(1, 4, latent, latent)
            weights = rss_gib()
            start = time.perf_counter()
            if case == "vae_tiled":
                decode_latents_tiled(model, z, tile=tile, overlap=tile // 4)
            else:
                model.decode_latents(z)
    return {"weights_gib": weights, "peak_gib": rss_gib(), "seconds": time.perf_counter() - start}


def main() -> None:
    """Run every case in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="attention queries per chunk")
    parser.add_argument("--tile", type=int, default=32, help="VAE tile side in latents (32 = 256 px)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # the subprocess side
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.chunk, args.tile)))
        return
    print(f"SD 1.5 architecture at {args.size}x{args.size} (fp32, CPU): peak RSS per case")
    header = f"{'case':14s} {'weights GiB':>12s} {'peak GiB':>9s} {'work GiB':>9s} {'seconds':>8s}"
    print(header)
    print("-" * len(header))
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--size", str(args.size), "--chunk",
                              str(args.chunk), "--tile", str(args.tile)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:14s} {r['weights_gib']:12.2f} {r['peak_gib']:9.2f} {r['peak_gib'] - r['weights_gib']:9.2f} "
              f"{r['seconds']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
