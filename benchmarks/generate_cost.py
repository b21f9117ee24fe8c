"""What one text-to-image call costs, and where the time goes: text encoding, denoising, decoding.

Prints one table: seconds per call for each stage (median over ``--repeats`` calls after one
warm-up), each stage's share, and the time per image and per denoising step (one step is one
batched UNet call on 2 x images inputs when guidance != 1). Sampler, steps and guidance default to
the model's own (``Pipeline.sampling_defaults``: dpmpp_2m, 25, 5; a consistency model's folder
names its own).

``--student PATH`` adds a few-step model (``ldm train distill``'s output): it is measured at
``--student-steps`` (1, 2, 4, 8) with its own sampler and guidance, in the same run, the calls of
both models alternated repeat by repeat, and a second table gives each row's time per image as a
ratio of the first model's at its settings (issue #17's bar: at most 1/8 at 4 steps), with the
range of the ratios taken repeat by repeat (on a shared machine one run's ratio moves by a tenth,
so the range says whether a bar is met or only touched). A student
folder with a tiny decoder (autoencoder/tiny.py; it decodes by default) is measured with it and,
in rows marked ``full``, with the autoencoder's decoder, so what each buys shows in one run.

The model, in order of preference:

1. ``--model PATH``, a model folder;
2. ``--tiny``: a tiny random model (a smoke test of this script, not a measurement);
3. the shipped default model (``models/<DEFAULT_MODEL_NAME>``);
4. a random model of the architecture in ``configs/emoji-diffusion.yaml`` (its ``unet``,
   ``conditioner``, ``diffusion``, ``data.resolution``; the autoencoder from its ``autoencoder``
   folder's config if present, else ``configs/emoji-autoencoder.yaml``'s ``model``);
5. fallback, the retired 64 px model's (emoji-64) class of size: autoencoder f=4 (base 32, channel_mult
   (1, 2, 2), 4 latent channels), UNet 64 channels x (1, 2, 2) with attention at the two lower
   levels (``benchmarks/unet_speed.py``'s "small"), MiniLM text encoder, 64 px images.

Random weights cost the same as trained ones, so 4 and 5 measure the real architecture.

    python benchmarks/generate_cost.py [--model PATH | --tiny] [--steps 25] [--num-images 1]
    python benchmarks/generate_cost.py --model models/emoji-styles --student models/emoji-styles-lcm
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import warnings
from pathlib import Path

import torch

from latent_diffusion.autoencoder import Autoencoder, AutoencoderConfig
from latent_diffusion.conditioning import ConditionerConfig, build_conditioner
from latent_diffusion.config import load_text
from latent_diffusion.diffusion.schedule import DiffusionConfig
from latent_diffusion.hardware import describe_cpu
from latent_diffusion.pipelines import DiffusionComponents, SamplingOptions, TextToImage, default_model_folder
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


def configure(pipe: TextToImage, args: argparse.Namespace) -> None:
    """Apply ``--precision`` and ``--backend``."""
    pipe.set_precision(args.precision)
    pipe.set_backend(args.backend)


def settings(pipe: TextToImage, args: argparse.Namespace, steps: int | None = None) -> dict:
    """The call's arguments: those given, the model's defaults for the rest (checked by the pipeline)."""
    options = pipe.resolve(SamplingOptions(num_images=args.num_images, steps=args.steps if steps is None else steps,
                                           sampler=args.sampler, guidance=args.guidance))
    return dict(num_images=options.num_images, steps=options.steps, sampler=options.sampler,
                guidance=options.guidance, progress=False)


def measure(cases: list[tuple[TextToImage, dict]], repeats: int) -> tuple[list[dict[str, float]], list[list[float]]]:
    """Median seconds per call of each stage (and the total) for each ``(pipeline, call)`` case,
    the cases run in turn ``repeats`` times so that a slow spell of the machine hits all of them;
    and each case's total per repeat, in order (for ratios taken repeat by repeat)."""
    runs: list[list[dict[str, float]]] = [[] for _ in cases]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a truncated prompt is irrelevant to timing
        for pipe, call in cases:  # warm-up: tokenizer load, allocator, first-call costs
            pipe(PROMPT, **{**call, "steps": 1})
        for _ in range(repeats):
            for (pipe, call), case_runs in zip(cases, runs):
                case_runs.append(pipe(PROMPT, **call).timings)
    medians, totals = [], []
    for case_runs in runs:
        stages = {name: statistics.median(r[name] for r in case_runs) for name in ("encode", "denoise", "decode")}
        totals.append([sum(r.values()) for r in case_runs])
        stages["total"] = statistics.median(totals[-1])
        medians.append(stages)
    return medians, totals


def print_table(pipe: TextToImage, description: str, call: dict, args: argparse.Namespace,
                t: dict[str, float]) -> None:
    """The cost table, with the model and settings it was measured on."""
    c = pipe.components
    millions = sum(p.numel() for p in c.unet.parameters()) / 1e6
    latent = pipe.native_size // c.autoencoder.downsampling_factor
    print(f"model: {description}")
    print(f"  {pipe.native_size} px images, latents {c.autoencoder.latent_channels}x{latent}x{latent}, "
          f"UNet {millions:.1f}M parameters, conditioner {c.conditioner.kind!r}")
    print(f"settings: {call['steps']} steps of {call['sampler']}, guidance {call['guidance']}, {args.num_images} "
          f"image(s) per call, {torch.get_num_threads()} torch thread(s), median of {args.repeats} call(s)")
    print(f"backend {pipe.backend.name}, precision {pipe.precision}, decoder {pipe.decoder}; CPU: {describe_cpu()}")
    print(f"{'stage':<14}{'s / call':>12}{'share':>9}")
    for name, label in (("encode", "text encoding"), ("denoise", "denoising"), ("decode", "decoding")):
        print(f"{label:<14}{t[name]:>12.4f}{t[name] / t['total']:>9.1%}")
    print(f"{'total':<14}{t['total']:>12.4f}{1:>9.0%}")
    print(f"{'per image':<14}{t['total'] / args.num_images:>12.4f}")
    print(f"{'per step':<14}{t['denoise'] / call['steps']:>12.4f}   (denoising only, whole batch)")


def print_comparison(base: tuple[TextToImage, dict], base_t: dict[str, float], student: str,
                     cases: list[tuple[TextToImage, dict]], times: list[dict[str, float]], num_images: int,
                     totals: list[list[float]]) -> None:
    """Each student row's time per image and its ratio to the first model's: of the medians, and
    the spread of the ratios taken repeat by repeat (a repeat runs every case once, in turn, so a
    slow spell of the machine hits its teacher call and its student calls alike; the spread says how
    far one run's ratio can be trusted)."""
    base_pipe, base_call = base
    base_image = base_t["total"] / num_images
    print(f"\nfew-step model: {student} (same run, calls alternated)")
    print(f"{'model':<10}{'sampler':<10}{'steps':>6}{'guidance':>10}{'decoder':>9}{'s / image':>11}{'denoise':>9}"
          f"{'decode':>8}{'ratio':>8}{'per-repeat ratio, min-max':>28}")
    rows = [("teacher", base_pipe, base_call, base_t, totals[0])]
    rows += [("student", p, c, t, r) for (p, c), t, r in zip(cases, times, totals[1:])]
    for name, pipe, call, t, repeat_totals in rows:
        image = t["total"] / num_images
        paired = [s / b for s, b in zip(repeat_totals, totals[0])]
        print(f"{name:<10}{call['sampler']:<10}{call['steps']:>6}{call['guidance']:>10g}{pipe.decoder:>9}"
              f"{image:>11.4f}{t['denoise'] / t['total']:>9.0%}{t['decode'] / t['total']:>8.0%}"
              f"{image / base_image:>8.3f}{min(paired):>19.3f} - {max(paired):.3f}")


def main() -> None:
    """Parse arguments, choose the model, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model folder to measure")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, to check this script")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's own (25)")
    parser.add_argument("--sampler", default=None, help="default: the model's own (dpmpp_2m)")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's own (5)")
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--student", type=Path, default=None,
                        help="a few-step (consistency-distilled) model folder to compare, at its own sampler")
    parser.add_argument("--student-steps", default="1,2,4,8", help="comma-separated step counts of --student")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                        help="bf16: autocast in PyTorch, inference precision in OpenVINO (default fp32)")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino"),
                        help="where the UNet and decoder run (default torch; openvino exports once, cached)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    try:
        student_steps = [int(n) for n in args.student_steps.split(",")]
    except ValueError:
        parser.error(f"--student-steps={args.student_steps!r} must be comma-separated integers, e.g. 1,2,4,8")
    pipe, description = choose_model(args)
    configure(pipe, args)
    call = settings(pipe, args)
    cases = [(pipe, call)]
    if args.student is not None:
        student = TextToImage.from_pretrained(args.student)
        configure(student, args)
        # The student samples with its own sampler and guidance; --sampler/--guidance are the first model's.
        student_args = argparse.Namespace(**{**vars(args), "sampler": None, "guidance": None})
        students = [student]
        if student.decoder == "tiny":  # the same student (same weights) with the full decoder, for comparison
            full = TextToImage(dataclasses.replace(student.components, tiny_decoder=None))
            configure(full, args)
            students.append(full)
        cases += [(s, settings(s, student_args, steps)) for s in students for steps in student_steps]
    times, totals = measure(cases, args.repeats)
    print_table(pipe, description, call, args, times[0])
    if args.student is not None:
        print_comparison(cases[0], times[0], str(args.student), cases[1:], times[1:], args.num_images, totals)


if __name__ == "__main__":
    main()
