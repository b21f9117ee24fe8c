"""What one text-to-image call costs, and where the time goes: text encoding, denoising, decoding.

Prints one table: seconds per call for each stage (median over ``--repeats`` calls after one
warm-up), each stage's share, and the time per image and per denoising step (one step is one
batched UNet call on 2 x images inputs when guidance != 1).

The model, in order of preference:

1. ``--model PATH``, a model folder;
2. ``--tiny``: a tiny random model (a smoke test of this script, not a measurement);
3. the shipped default model (``models/emoji-32``);
4. a random model of the architecture in ``configs/emoji-diffusion.yaml`` (its ``unet``,
   ``conditioner``, ``diffusion``, ``data.resolution``; the autoencoder from its ``autoencoder``
   folder's config if present, else ``configs/emoji-autoencoder.yaml``'s ``model``);
5. fallback, the retired 64 px model's (emoji-64) class of size: autoencoder f=4 (base 32, channel_mult
   (1, 2, 2), 4 latent channels), UNet 64 channels x (1, 2, 2) with attention at the two lower
   levels (``benchmarks/unet_speed.py``'s "small"), MiniLM text encoder, 64 px images.

Random weights cost the same as trained ones, so 4 and 5 measure the real architecture.

    python benchmarks/generate_cost.py [--model PATH | --tiny] [--steps 25] [--num-images 1]
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.config import load_text
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.pipelines import DiffusionComponents, TextToImage, default_model_folder
from latent_diffusion.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION_YAML = ROOT / "configs" / "emoji-diffusion.yaml"
AUTOENCODER_YAML = ROOT / "configs" / "emoji-autoencoder.yaml"
FALLBACK_AUTOENCODER = AutoencoderConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                                         z_channels=4, norm_groups=16)
FALLBACK_UNET = UNetConfig(in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                           num_res_blocks=2, attention_levels=(1, 2), num_heads=4, context_dim=384)
PROMPT = "a smiling yellow face with heart eyes"


def autoencoder_config(diffusion_yaml: dict | None) -> AutoencoderConfig:
    """The autoencoder architecture of option 4 (or the fallback's)."""
    folder = ROOT / diffusion_yaml["autoencoder"] if diffusion_yaml and "autoencoder" in diffusion_yaml else None
    if folder is not None and (folder / "autoencoder.json").is_file():  # relative paths: to the repository
        return AutoencoderConfig.load(folder / "autoencoder.json")
    if AUTOENCODER_YAML.is_file():
        return AutoencoderConfig.from_dict(load_text(AUTOENCODER_YAML)["model"])
    return FALLBACK_AUTOENCODER


def random_components(unet: UNetConfig, conditioner: ConditionerConfig, diffusion: DiffusionConfig,
                      autoencoder: AutoencoderConfig, resolution: int) -> DiffusionComponents:
    """A model of the given architecture with random weights (seeded)."""
    torch.manual_seed(0)
    return DiffusionComponents(Autoencoder(autoencoder), UNet(unet), build_conditioner(conditioner),
                               diffusion, resolution)


def tiny_components() -> DiffusionComponents:
    """Option 2: seconds to build and run, for checking this script."""
    conditioner = ConditionerConfig(kind="transformer", max_length=16, transformer_width=32,
                                    transformer_depth=1, transformer_heads=2)
    unet = UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_levels=(1,), num_heads=2, context_dim=32, norm_groups=8)
    autoencoder = AutoencoderConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                    norm_groups=4)
    return random_components(unet, conditioner, DiffusionConfig(), autoencoder, 16)


def choose_model(args: argparse.Namespace) -> tuple[TextToImage, str]:
    """The pipeline to measure and a line saying which model it is."""
    if args.model is not None:
        return TextToImage.from_pretrained(args.model), f"model folder {args.model}"
    if args.tiny:
        return TextToImage(tiny_components()), "tiny random model (smoke test, not a measurement)"
    if default_model_folder().is_dir():
        return TextToImage.from_pretrained(), f"shipped model {default_model_folder()}"
    if DIFFUSION_YAML.is_file():
        data = load_text(DIFFUSION_YAML)
        components = random_components(
            UNetConfig.from_dict(data["unet"]), ConditionerConfig.from_dict(data["conditioner"]),
            DiffusionConfig.from_dict(data.get("diffusion", {})), autoencoder_config(data),
            int(data["data"]["resolution"]))
        return TextToImage(components), f"random model of {DIFFUSION_YAML.relative_to(ROOT)}"
    components = random_components(FALLBACK_UNET, ConditionerConfig(kind="minilm"), DiffusionConfig(),
                                   autoencoder_config(None), 64)
    return TextToImage(components), "random model of the fallback architecture (see module docstring)"


def measure(pipe: TextToImage, args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call of each stage (and the total) over ``args.repeats`` calls."""
    call = dict(num_images=args.num_images, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a truncated prompt is irrelevant to timing
        pipe(PROMPT, **{**call, "steps": 1})  # warm-up: tokenizer load, allocator, first-call costs
        runs = [pipe(PROMPT, **call).timings for _ in range(args.repeats)]
    stages = {name: statistics.median(r[name] for r in runs) for name in ("encode", "denoise", "decode")}
    stages["total"] = statistics.median(sum(r.values()) for r in runs)
    return stages


def print_table(pipe: TextToImage, description: str, args: argparse.Namespace, t: dict[str, float]) -> None:
    """The cost table, with the model and settings it was measured on."""
    c = pipe.components
    millions = sum(p.numel() for p in c.unet.parameters()) / 1e6
    latent = pipe.native_size // c.autoencoder.downsampling_factor
    print(f"model: {description}")
    print(f"  {pipe.native_size} px images, latents {c.autoencoder.latent_channels}x{latent}x{latent}, "
          f"UNet {millions:.1f}M parameters, conditioner {c.conditioner.kind!r}")
    print(f"settings: {args.steps} steps of {args.sampler}, guidance {args.guidance}, {args.num_images} "
          f"image(s) per call, {torch.get_num_threads()} torch thread(s), median of {args.repeats} call(s)")
    print(f"{'stage':<14}{'s / call':>12}{'share':>9}")
    for name, label in (("encode", "text encoding"), ("denoise", "denoising"), ("decode", "decoding")):
        print(f"{label:<14}{t[name]:>12.4f}{t[name] / t['total']:>9.1%}")
    print(f"{'total':<14}{t['total']:>12.4f}{1:>9.0%}")
    print(f"{'per image':<14}{t['total'] / args.num_images:>12.4f}")
    print(f"{'per step':<14}{t['denoise'] / args.steps:>12.4f}   (denoising only, whole batch)")


def main() -> None:
    """Parse arguments, choose the model, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model folder to measure")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, to check this script")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    pipe, description = choose_model(args)
    print_table(pipe, description, args, measure(pipe, args))


if __name__ == "__main__":
    main()
