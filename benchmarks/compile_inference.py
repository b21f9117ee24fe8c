"""torch.compile (inductor) for inference: the networks of a sampling call, eager against compiled.

Issue #18 asks for torch.compile to be measured beside OpenVINO as the in-PyTorch option. For each
network a text-to-image call runs in a loop, at the shapes the call gives it (the UNet of a model
folder at its own batch: 1 for a consistency model, 2 for a guided one; the VAE decoder on one
latent), it prints milliseconds per forward (median of ``--repeats`` after warm-up) in eager fp32,
eager bf16 autocast, compiled fp32 and compiled bf16, the four run in turn every repeat; the
seconds the first compiled call took (inductor compiles once per process, shape and precision, so
``ldm generate`` would pay it on every run; its on-disk cache, ``/tmp/torchinductor_$USER``, cuts a
first, cold run's 44-59 s to about 5) and the compiled output's largest difference from eager's in fp32.

Compare with ``generate_cost.py --backend openvino``'s per-step time: OpenVINO's graph is exported
once and cached across processes, so a compiled path has to beat it per call to be worth a backend.

    python benchmarks/compile_inference.py [--models models/emoji-styles-lcm models/emoji-styles] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch

from unet_speed import alternated_medians  # benchmarks/ is on sys.path when a script here runs

from latent_diffusion.hardware import cpu_bf16_units, describe_cpu
from latent_diffusion.pipelines import TextToImage

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3


def measure(network: Callable[..., torch.Tensor], inputs: tuple, kwargs: dict, repeats: int,
            bf16: bool) -> dict[str, float]:
    """Eager and compiled figures of one network on one set of inputs."""
    compiled = torch.compile(network)
    result: dict[str, float] = {}

    def under(precision: str, fn: Callable[..., torch.Tensor]) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                return fn(*inputs, **kwargs)
        return call

    with torch.no_grad():
        for precision in ("fp32", "bf16") if bf16 else ("fp32",):
            began = time.perf_counter()
            out = under(precision, compiled)()
            result[f"compile {precision} s"] = time.perf_counter() - began
            if precision == "fp32":
                result["max diff"] = float((out - network(*inputs, **kwargs)).abs().max())
        calls = {f"{kind} {precision}": under(precision, fn) for precision in (("fp32", "bf16") if bf16 else ("fp32",))
                 for kind, fn in (("eager", network), ("compiled", compiled))}
        result |= {name: seconds * 1000 for name, seconds in alternated_medians(calls, repeats, WARMUP).items()}
    return result


def unet_case(pipe: TextToImage) -> tuple[torch.nn.Module, tuple, dict, int]:
    """The UNet with one step's inputs at the batch the model's own call uses."""
    c = pipe.components
    unet = c.unet
    batch = 1 if c.consistency is not None else 2  # a guided step stacks the unconditional half
    side = pipe.native_size // c.autoencoder.downsampling_factor
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, unet.config.in_channels, side, side, generator=generator)
    kwargs = {"context": torch.randn(batch, 77, unet.config.context_dim, generator=generator)}
    if unet.config.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(batch, unet.config.time_cond_proj_dim, generator=generator)
    return unet, (x, torch.full((batch,), 500.0)), kwargs, batch


def main() -> None:
    """Parse arguments, measure each network, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", type=Path,
                        default=[ROOT / "models" / "emoji-styles-lcm", ROOT / "models" / "emoji-styles"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    bf16 = cpu_bf16_units() is not None
    print(describe_cpu() + ("" if bf16 else " (bf16 columns skipped)"))
    print(f"ms per forward, median of {args.repeats}; compile s = the first compiled call")
    columns = ["eager fp32", "compiled fp32"] + (["eager bf16", "compiled bf16"] if bf16 else [])
    seconds = ["compile fp32 s"] + (["compile bf16 s"] if bf16 else [])
    print(f"{'network':44s}" + "".join(f"{c:>15s}" for c in columns + seconds) + f"{'max diff':>10s}")

    def row(name: str, result: dict[str, float]) -> None:
        print(f"{name:44s}" + "".join(f"{result[c]:15.1f}" for c in columns + seconds)
              + f"{result['max diff']:10.1e}", flush=True)

    for folder in args.models:
        pipe = TextToImage.from_pretrained(folder)
        unet, inputs, kwargs, batch = unet_case(pipe)
        row(f"{folder.name} UNet, batch {batch}", measure(unet, inputs, kwargs, args.repeats, bf16))
    decoder = pipe.components.autoencoder  # the last model's (the shipped ones share one decoder)
    side = pipe.native_size // decoder.downsampling_factor
    latent = torch.randn(1, decoder.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
    row(f"{folder.name} VAE decoder, 1 image", measure(decoder.decode, (latent,), {}, args.repeats, bf16))

if __name__ == "__main__":
    main()
