"""Speed against diffusers: same architecture, same weights, same machine, one run.

Builds the SD 1.5 architecture with random weights in this project, converts them with
``latent_diffusion.convert`` into diffusers' UNet2DConditionModel / AutoencoderKL and
transformers' CLIPTextModel, and times, for each dtype (fp32, and bf16 where the CPU has bf16
units), the UNet forward (batch 2 = one classifier-free-guidance step, 64x64 latents), the VAE
decode (one 512x512 image) and the whole text-to-image call (20 DDIM steps, guidance 7.5; the
matching diffusers scheduler, so both do the same work). Ours and diffusers' runs alternate
(ours, theirs, ours, ...) and each side's median is printed, with the ratio ours / diffusers
(below 1.0: we are faster). Needs diffusers (a test dependency).

    python benchmarks/vs_diffusers.py [--repeats 1] [--steps 20] [--size 512] [--skip-pipeline]
        [--backend openvino]     # adds the UNet forward in OpenVINO, fp32 and bf16, vs diffusers fp32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.conditioning.clip import write_hf_tokenizer_files
from latent_diffusion.convert.clip_keys import clip_to_hf_state, clip_to_transformers_config
from latent_diffusion.convert.schedulers import matching_scheduler
from latent_diffusion.convert.unet_keys import unet_config_to_diffusers, unet_to_diffusers
from latent_diffusion.convert.vae_keys import vae_config_to_diffusers, vae_to_diffusers
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.hardware import describe_cpu
from latent_diffusion.pipelines import DiffusionComponents, TextToImage
from latent_diffusion.unet import UNet, UNetConfig
from unet_speed import alternated_medians, best_time, run_times  # benchmarks/ is on sys.path when a script here runs

PROMPT = "a red lighthouse at dusk, oil painting"
SAMPLER, SPACING = "ddim", "trailing"


def bf16_usable() -> tuple[bool, str]:
    """bf16 is worth timing only where matmuls run at a useful fraction of fp32 speed."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(256, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
        rates[dtype] = 2 * 256**3 / best_time(lambda: a @ b, 3)
    ok = rates[torch.bfloat16] > 0.25 * rates[torch.float32]
    return ok, (f"a 256^3 bf16 matmul runs at {rates[torch.bfloat16] / 1e9:.2f} GFLOP/s against "
                f"{rates[torch.float32] / 1e9:.1f} in fp32 (no bf16 matrix units on this CPU)")


def build_ours(size: int) -> DiffusionComponents:
    """SD 1.5's architecture, random weights (the zero-initialized layers too, so no work is trivial)."""
    torch.manual_seed(0)
    unet = UNet(UNetConfig(use_scale_shift_norm=False))
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    autoencoder = Autoencoder(AutoencoderConfig(scale_factor=0.18215))
    conditioner = build_conditioner(ConditionerConfig(kind="clip"))
    return DiffusionComponents(autoencoder, unet, conditioner, DiffusionConfig(), size).eval()


def build_diffusers(ours: DiffusionComponents, tokenizer_dir: str):
    """diffusers' StableDiffusionPipeline holding exactly our weights."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    strip = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    unet = UNet2DConditionModel(**strip(unet_config_to_diffusers(ours.unet.config, ours.latent_size)))
    unet.load_state_dict(unet_to_diffusers(ours.unet.state_dict(), ours.unet.config), strict=True)
    vae = AutoencoderKL(**strip(vae_config_to_diffusers(ours.autoencoder.config, ours.resolution)))
    vae.load_state_dict(vae_to_diffusers(ours.autoencoder.state_dict(), ours.autoencoder.config), strict=True)
    config = ours.conditioner.config
    text = CLIPTextModel(CLIPTextConfig(**clip_to_transformers_config(config)))
    text.load_state_dict({k.removeprefix("text_model."): v
                          for k, v in clip_to_hf_state(ours.conditioner.state_dict(), config).items()}, strict=True)
    write_hf_tokenizer_files(tokenizer_dir, config.max_length, config.clip_pad_token_id)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text.eval(), tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet.eval(), scheduler=matching_scheduler(SAMPLER, SPACING, ours.diffusion),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(ours: DiffusionComponents, theirs, dtype: torch.dtype, args: argparse.Namespace) -> list[tuple]:
    """(what, ours seconds, diffusers seconds) for each benchmark at ``dtype``."""
    for module in (ours.unet, ours.autoencoder, ours.conditioner, theirs.unet, theirs.vae, theirs.text_encoder):
        module.to(dtype)
    latent = args.size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g, dtype=dtype)
    t = torch.tensor([981.0, 981.0])
    context = torch.randn(2, 77, 768, generator=g, dtype=dtype)
    z = torch.randn(1, 4, latent, latent, generator=g, dtype=dtype)
    rows = []
    with torch.no_grad():
        rows.append(("UNet forward b2", *alternated(lambda: ours.unet(x, t, context=context),
                                                    lambda: theirs.unet(x, t, encoder_hidden_states=context),
                                                    args.repeats)))
        rows.append(("VAE decode", *alternated(lambda: ours.autoencoder.decode(z), lambda: theirs.vae.decode(z),
                                               args.repeats)))
        if args.backend == "openvino" and dtype == torch.float32:
            rows += openvino_rows(ours, x, t, context, rows[0][2], args)
    if not args.skip_pipeline:
        # A minutes-long call: each side's warm-up is a 1-step call (a pipeline's first call loads
        # its tokenizer and sets up its scheduler; one cold run among few skews a median).
        pipe = TextToImage(ours)

        def ours_call(steps: int) -> object:
            return pipe(PROMPT, steps=steps, sampler=SAMPLER, guidance=7.5, seed=0, progress=False)

        def theirs_call(steps: int) -> object:
            return theirs(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=args.size, width=args.size,
                          generator=torch.Generator().manual_seed(0), output_type="np")

        ours_call(1)
        theirs_call(1)
        ours_s, theirs_s = alternated(lambda: ours_call(args.steps), lambda: theirs_call(args.steps), args.repeats,
                                      warmup=False)
        rows.append((f"text-to-image {args.steps} steps", ours_s, theirs_s))
        if args.backend == "openvino" and dtype == torch.float32:
            rows.append(openvino_pipeline_row(ours, theirs_s, args))
    return rows


def openvino_rows(ours: DiffusionComponents, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                  theirs_fp32: float, args: argparse.Namespace) -> list[tuple]:
    """Our UNet forward in OpenVINO (fp32 and, with bf16 units, bf16 inference precision) against
    diffusers' fp32 forward of the same run; the export (once, cached in a temporary folder) is
    printed apart and not timed."""
    from latent_diffusion.backends.openvino import OpenVINOUNet

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        unet = OpenVINOUNet(ours.unet, cache_dir=cache)
        for precision in ("fp32", "bf16") if bf16_usable()[0] else ("fp32",):
            unet.precision = precision
            start = time.perf_counter()
            unet(x, t, context=context)  # export (first precision only) and compile
            print(f"openvino {precision}: export + compile + first call {time.perf_counter() - start:.1f} s",
                  flush=True)
            rows.append((f"UNet b2 openvino {precision}", median_time(lambda: unet(x, t, context=context),
                                                                      args.repeats), theirs_fp32))
    return rows


def openvino_pipeline_row(ours: DiffusionComponents, theirs_fp32: float, args: argparse.Namespace) -> tuple:
    """The whole text-to-image call on OpenVINO in its fastest precision, against diffusers' fp32
    call of the same run (the export, cached in a temporary folder, is a call of its own first)."""
    precision = "bf16" if bf16_usable()[0] else "fp32"
    with tempfile.TemporaryDirectory() as cache:
        pipe = TextToImage(ours, precision=precision)
        pipe.set_backend("openvino", cache_dir=cache)
        call = dict(steps=args.steps, sampler=SAMPLER, guidance=7.5, seed=0, progress=False)
        start = time.perf_counter()
        pipe(PROMPT, **{**call, "steps": 1})
        print(f"openvino {precision} text-to-image: export + compile + 1-step call {time.perf_counter() - start:.1f} s",
              flush=True)
        return (f"text-to-image openvino {precision}", median_time(lambda: pipe(PROMPT, **call), args.repeats,
                                                                   warmup=False), theirs_fp32)


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs, after one warm-up call unless not."""
    return statistics.median(run_times(fn, repeats, warmup))


def alternated(ours: Callable[[], object], theirs: Callable[[], object], repeats: int,
               warmup: bool = True) -> tuple[float, float]:
    """Median wall seconds of each side over ``repeats`` runs taken in turn (ours, theirs, ours, ...);
    one warm-up call each first, unless not."""
    medians = alternated_medians({"ours": ours, "theirs": theirs}, repeats, warmup=int(warmup))
    return medians["ours"], medians["theirs"]


def main() -> None:
    """Build both, time every benchmark in each usable dtype, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per benchmark (median; ours and diffusers alternated)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="image side (latents are size/8)")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the UNet and VAE benchmarks")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows of PyTorch and diffusers")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino"),
                        help="openvino adds our UNet forward in OpenVINO (fp32, bf16) against diffusers' fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    dtypes = [torch.float32]
    usable, reason = bf16_usable()
    if usable and not args.no_bf16:
        dtypes.append(torch.bfloat16)
    ours = build_ours(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        theirs = build_diffusers(ours, tmp)
    print(f"SD 1.5 architecture, random weights; threads={args.threads}, median of {args.repeats} "
          f"(text-to-image: {args.size}px, {SAMPLER}/{SPACING}, guidance 7.5)")
    print(describe_cpu())
    header = f"{'benchmark':26s} {'dtype':5s} {'ours s':>9s} {'diffusers s':>12s} {'ours/diffusers':>15s}"
    print(header)
    print("-" * len(header))
    for dtype in dtypes:
        for what, ours_s, theirs_s in measure(ours, theirs, dtype, args):
            name = "fp32" if dtype == torch.float32 else "bf16"
            print(f"{what:26s} {name:5s} {ours_s:9.2f} {theirs_s:12.2f} {ours_s / theirs_s:15.3f}", flush=True)
    if not usable:
        print(f"bf16 skipped: {reason}")


if __name__ == "__main__":
    main()
