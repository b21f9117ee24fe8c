"""Peak memory of SD 1.5-sized work at 512x512 on the CPU, per backend and precision, with and
without tiling and chunking.

Each case runs in a fresh subprocess and reports its peak resident set size (``ru_maxrss``) and
that of the weights alone, so the difference is what the computation itself needs:

- ``unet``: one UNet forward of a classifier-free-guidance batch (2 x 4 x 64 x 64 latents), with
  plain SDPA attention, with queries chunked (``UNet.set_attention_chunk_size``), under bf16
  autocast, and in OpenVINO (``--backend openvino``'s wrapper): ``_export`` is the first call of a
  fresh cache (export, compile, call), ``_fp32`` / ``_bf16`` later calls that load the cached graph;
- ``vae``: decoding one 512x512 image, whole, in 256-px latent tiles blended over 64 px
  (``autoencoder.tiling.decode_latents_tiled``), under bf16 autocast, and in OpenVINO.

The OpenVINO cases hold the PyTorch weights too (the wrapper falls back to them), so their
"weights" column is PyTorch's and "work" includes the compiled graph's own copy. Without the
optional extra those rows are skipped.

    python benchmarks/sd_memory.py [--size 512] [--chunk 1024] [--tile 32] [--cases unet vae ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = ("unet", "unet_chunked", "unet_bf16", "unet_openvino_export", "unet_openvino_fp32", "unet_openvino_bf16",
         "vae", "vae_tiled", "vae_bf16", "vae_openvino_export", "vae_openvino_bf16")


def rss_gib() -> float:
    """Peak resident set size of this process so far, in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_case(case: str, size: int, chunk: int, tile: int, cache_dir: Path) -> dict[str, float]:
    """Build the network, note the peak so far, run the case, note the peak again."""
    from latent_diffusion.hardware import autocast

    latent = size // 8
    precision = "bf16" if case.endswith("bf16") else "fp32"
    openvino = "_openvino" in case
    torch.manual_seed(0)
    with torch.no_grad():
        if case.startswith("unet"):
            from latent_diffusion.unet import UNet, UNetConfig

            model = UNet(UNetConfig(use_scale_shift_norm=False)).eval()
            if case == "unet_chunked":
                model.set_attention_chunk_size(chunk)
            x, context = torch.randn(2, 4, latent, latent), torch.randn(2, 77, 768)
            weights = rss_gib()
            if openvino:
                from latent_diffusion.backends.openvino import OpenVINOUNet

                model = OpenVINOUNet(model, precision, cache_dir)
            start = time.perf_counter()
            with autocast("fp32" if openvino else precision, torch.device("cpu")):
                model(x, torch.tensor([981.0, 981.0]), context=context)
        else:
            from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
            from latent_diffusion.autoencoder.tiling import decode_latents_tiled

            model = Autoencoder(AutoencoderConfig(scale_factor=0.18215)).eval()
            z = torch.randn(1, 4, latent, latent)
            weights = rss_gib()
            if openvino:
                from latent_diffusion.backends.openvino import OpenVINODecoder

                model = OpenVINODecoder(model, precision, cache_dir)
            start = time.perf_counter()
            with autocast("fp32" if openvino else precision, torch.device("cpu")):
                if case == "vae_tiled":
                    decode_latents_tiled(model, z, tile=tile, overlap=tile // 4)
                else:
                    model.decode_latents(z)
    return {"weights_gib": weights, "peak_gib": rss_gib(), "seconds": time.perf_counter() - start}


def main() -> None:
    """Run every case in its own process and print the table."""
    from latent_diffusion.hardware import cpu_bf16_units, describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024, help="attention queries per chunk")
    parser.add_argument("--tile", type=int, default=32, help="VAE tile side in latents (32 = 256 px)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # the subprocess side
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.size, args.chunk, args.tile, args.cache_dir)))
        return
    print(describe_cpu())
    print(f"SD 1.5 architecture at {args.size}x{args.size} (CPU): peak RSS per case")
    cases = list(args.cases)
    if importlib.util.find_spec("openvino") is None:
        cases = [c for c in cases if "_openvino" not in c]
        print("openvino rows skipped: the optional extra is not installed (pip install -e '.[openvino]')")
    if cpu_bf16_units() is None:
        cases = [c for c in cases if not c.endswith("bf16")]
        print("bf16 rows skipped: this CPU has no bf16 matrix units")
    header = f"{'case':22s} {'weights GiB':>12s} {'peak GiB':>9s} {'work GiB':>9s} {'seconds':>8s}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as cache:  # the OpenVINO graphs: exported by _export, read after
        for case in cases:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--size", str(args.size), "--chunk",
                                  str(args.chunk), "--tile", str(args.tile), "--cache-dir", cache],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{case:22s} {r['weights_gib']:12.2f} {r['peak_gib']:9.2f} {r['peak_gib'] - r['weights_gib']:9.2f} "
                  f"{r['seconds']:8.1f}", flush=True)


if __name__ == "__main__":
    main()
