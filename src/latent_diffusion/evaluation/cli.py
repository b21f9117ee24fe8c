"""``ldm eval MODEL``: score a model folder and write the numbers, settings and model hash as JSON.

MODEL is a diffusion model folder (``model_index.json``) or an autoencoder folder
(``autoencoder.json``, e.g. ``runs/<name>/final`` of ``ldm train autoencoder``).

* autoencoder: PSNR, SSIM, perceptual distance, rFID (and VQ codebook usage) on the split;
* diffusion model: FID and KID of ``--num-samples`` generated images against the split's images
  (prompts: the split's captions / labels), and for emoji text-to-image models prompt adherence
  (top-1/top-5 retrieval for training and held-out prompts); ``--metrics reconstruction`` adds
  its autoencoder's scores;
* text-to-image models on ``emoji-styles``, besides: composition (held-out concept-style pairs),
  memorization (share of samples that copy a training picture) and seed diversity
  (``latent_diffusion.evaluation.emoji_styles`` says how each works and where it misleads).

Reference features (InceptionV3 of the split's images) and the adherence gallery's embeddings
(all 7,572 emoji pictures) are computed once and cached in ``~/.cache/latent-diffusion/features``;
on one CPU core the first run spends about 3 and 8 minutes on them.

Examples::

    ldm eval runs/emoji-autoencoder/final --split validation
    ldm eval runs/emoji-diffusion/final --num-samples 256 --steps 25 --output eval.json
    ldm eval runs/emoji-styles-unet/final --data emoji-styles --steps 20
    ldm eval MODEL --data imagefolder --data-path photos/ --metrics fid reconstruction
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from latent_diffusion.evaluation.runner import EvalSettings, evaluate, write_metrics
from latent_diffusion.io import check_writable_folder


def register(subparsers: Any) -> None:
    """Add ``eval`` to the ``ldm`` parser."""
    parser = subparsers.add_parser("eval", help="FID/KID, reconstruction and prompt-adherence metrics of a model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (model_index.json) or autoencoder folder (autoencoder.json)")
    data = parser.add_argument_group("data")
    # Names are checked by EvalSettings, not argparse `choices`, so a typo is a one-line error.
    data.add_argument("--data", default="emoji",
                      help="emoji, emoji-styles, fashion-mnist, mnist or imagefolder (default emoji)")
    data.add_argument("--data-path", default=None, help="imagefolder: the folder; others: a prepared folder")
    data.add_argument("--split", default="validation",
                      help="train, validation or all; emoji-styles also composition (default validation)")
    data.add_argument("--val-fraction", type=float, default=None, help="validation fraction (dataset default)")
    data.add_argument("--caption-mode", default="full", help="captions used as prompts: full, name or variant")
    data.add_argument("--resolution", type=int, default=None, help="autoencoder folders only (default 64)")
    data.add_argument("--styles", nargs="+", default=None, metavar="STYLE",
                      help="emoji: google and/or twitter (default both); emoji-styles: its style names "
                           "(default its six)")
    data.add_argument("--no-skin-tones", action="store_true",
                      help="emoji: base emoji only, without their skin-tone variants")
    what = parser.add_argument_group("metrics")
    what.add_argument("--metrics", nargs="+", default=None, metavar="GROUP",
                      help="reconstruction, fid, adherence, composition, memorization, diversity (default: "
                           "reconstruction for autoencoders, fid [+ adherence for emoji text models, + the "
                           "last three for emoji-styles text models] for diffusion models)")
    what.add_argument("--num-samples", type=int, default=None,
                      help="generated images for FID/KID (default 256); for an autoencoder folder: "
                           "images reconstructed (default: the whole split)")
    what.add_argument("--num-reference", type=int, default=None,
                      help="real images for FID/KID and a diffusion model's reconstruction (default: all)")
    what.add_argument("--adherence-prompts", type=int, default=100, help="emoji per adherence prompt set")
    what.add_argument("--memorization-samples", type=int, default=128,
                      help="emoji-styles: samples checked for copies of training pictures")
    what.add_argument("--diversity-prompts", type=int, default=16, help="emoji-styles: prompts of the seed diversity")
    what.add_argument("--diversity-seeds", type=int, default=4, help="emoji-styles: samples per diversity prompt")
    what.add_argument("--kid-subsets", type=int, default=100, help="random subsets averaged by KID")
    what.add_argument("--no-perceptual", action="store_true", help="skip the perceptual distance")
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--sampler", default=None, help="ddim, ddpm, euler, euler_ancestral, heun, dpmpp_2m, lcm "
                                                          "(default dpmpp_2m; lcm for a consistency model)")
    sampling.add_argument("--steps", type=int, default=None, help="default 25; a consistency model's own")
    sampling.add_argument("--guidance", type=float, default=None, help="CFG scale (default 5, as ldm generate; 1 if unconditional)")
    sampling.add_argument("--spacing", default=None, help="leading, trailing, linspace, karras (sampler default)")
    sampling.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--device", default="cpu", help="cpu, cuda, auto, ...")
    run.add_argument("-o", "--output", default="metrics.json", help="JSON file to write (default metrics.json)")
    run.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/latent-diffusion/features)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run_eval)


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` a parsed command line asks for (validated)."""
    metrics = tuple(m for item in (args.metrics or []) for m in item.split(",") if m)
    return EvalSettings(
        model=args.model, data=args.data, data_path=args.data_path, split=args.split,
        val_fraction=args.val_fraction, caption_mode=args.caption_mode, resolution=args.resolution,
        styles=tuple(args.styles) if args.styles else None, skin_tones=not args.no_skin_tones,
        num_samples=args.num_samples, num_reference=args.num_reference, metrics=metrics, sampler=args.sampler,
        steps=args.steps, guidance=args.guidance, spacing=args.spacing, seed=args.seed,
        batch_size=args.batch_size, adherence_prompts=args.adherence_prompts, kid_subsets=args.kid_subsets,
        perceptual=not args.no_perceptual, device=args.device, memorization_samples=args.memorization_samples,
        diversity_prompts=args.diversity_prompts, diversity_seeds=args.diversity_seeds,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write the JSON."""
    settings = settings_from_args(args)
    output = Path(args.output)
    if output.is_dir():
        raise ValueError(f"--output {str(output)!r} is a folder; give a file name such as metrics.json")
    check_writable_folder(output.parent, "--output FILE")  # before the evaluation, not after it
    if not Path(args.model).exists():
        raise FileNotFoundError(f"model folder {args.model!r} does not exist")
    result = evaluate(settings, cache_dir=args.cache_dir, progress=not args.no_progress)
    print(format_table(result))
    print(f"wrote {write_metrics(output, result)}")
    return 0


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= 1000:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    return [f"  {name:<28s}{value}" for name, value in rows]


def format_table(result: dict[str, Any]) -> str:
    """A readable summary of an evaluation result."""
    model, settings, metrics = result["model"], result["settings"], result["metrics"]
    about = f"{model['kind']}, hash {model['hash']}"
    if model.get("conditioner"):
        about += f", conditioner {model['conditioner']}"
    if model.get("training_steps") is not None:
        about += f", {model['training_steps']} training steps"
    data = result["data"]
    lines = [f"model     {model['path']} ({about})",
             f"data      {data['name']} / {data['split']}: {data['num_images']} images at {model['resolution']} px"]
    if "generation" in metrics or "adherence" in metrics:
        lines.append(f"sampling  {settings['sampler']}, {settings['steps']} steps ({settings['spacing']} spacing), "
                     f"guidance {settings['guidance']}, seed {settings['seed']}")
    lines += _reconstruction_lines(metrics.get("reconstruction"))
    lines += _generation_lines(metrics.get("generation"), result.get("feature_extractor"))
    lines += _adherence_lines(metrics.get("adherence"))
    lines += _composition_lines(metrics.get("composition"))
    lines += _memorization_lines(metrics.get("memorization"))
    lines += _diversity_lines(metrics.get("diversity"))
    lines += ["notes"] + [f"  - {note}" for note in result["notes"]] if result["notes"] else []
    return "\n".join(lines)


def _reconstruction_lines(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    rows = [("PSNR (dB)", _number(m["psnr"])), ("SSIM", _number(m["ssim"])),
            ("perceptual distance", _number(m["perceptual"])), ("rFID", _number(m["rfid"]))]
    if m.get("codebook_usage") is not None:
        rows += [("codebook usage", _number(m["codebook_usage"])),
                 ("codebook perplexity", _number(m["codebook_perplexity"]))]
    return [f"reconstruction ({m['num_images']} images)"] + _rows(rows)


def _generation_lines(m: dict[str, Any] | None, extractor: str | None) -> list[str]:
    if m is None:
        return []
    head = f"generation ({m['num_generated']} samples vs {m['num_reference']} real images; features {extractor})"
    kid = f"{_number(m['kid'])} ± {_number(m['kid_std'])} ({m['kid_subsets']} subsets of {m['kid_subset_size']})"
    return [head] + _rows([("FID", _number(m["fid"])), ("KID", kid)])


def _adherence_lines(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    lines = [f"adherence ({m['num_emoji']} emoji; gallery {m['gallery_size']} images; embedder {m['embedder']})",
             f"  {'':<28s}{'top-1':>8s}{'top-5':>8s}{'chance@1':>10s}{'chance@5':>10s}"]
    for key, label in (("training_prompts", "training prompts"), ("heldout_prompts", "held-out prompts")):
        s = m[key]
        lines.append(f"  {label:<28s}{s['top1']:8.3f}{s['top5']:8.3f}{s['chance_top1']:10.4f}{s['chance_top5']:10.4f}")
    if "real_new_drawings" in m:  # emoji-styles: the ceiling
        s = m["real_new_drawings"]
        if s["n"]:
            lines.append(f"  {'real drawings (ceiling)':<28s}{s['top1']:8.3f}{s['top5']:8.3f}   n={s['n']}, each "
                         "without its own drawing in the gallery")
        else:
            lines.append(f"  {'real drawings (ceiling)':<28s}  n/a: no concept has a second drawing to be found by")
    return lines


def _composition_lines(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    accuracy = m["style_probe_validation_accuracy"]
    lines = [f"composition ({m['num_pairs']} held-out concept-style pairs; {m['num_concepts']} concepts; style probe "
             f"{'-' if accuracy is None else f'{accuracy:.3f}'} on real validation pictures)",
             f"  {'':<28s}{'top-1':>8s}{'top-5':>8s}{'style':>8s}"]
    for key, label in (("heldout_pairs", "held-out pairs"), ("seen_pairs", "seen pairs (control)"),
                       ("real_heldout_pairs", "real held-out (ceiling)")):
        if key in m and m[key]["n"]:
            s = m[key]
            lines.append(f"  {label:<28s}{s['top1']:8.3f}{s['top5']:8.3f}{s['style_accuracy']:8.3f}")
    lines.append(f"  {'chance':<28s}{m['chance_top1']:8.4f}{m['chance_top5']:8.4f}{m['chance_style']:8.3f}")
    return lines


def _memorization_lines(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    lines = [f"memorization (nearest / second-nearest training drawing; a copy below {m['threshold']:.3g})",
             f"  {'':<28s}{'copies':>8s}{'p10':>8s}{'median':>8s}{'n':>6s}"]
    for key, label in (("samples", "samples"), ("real_validation", "real validation pictures"),
                       ("real_composition", "real composition pictures")):
        if key in m:
            s = m[key]
            lines.append(f"  {label:<28s}{s['copy_share']:8.3f}{s['ratio_p10']:8.3f}{s['ratio_median']:8.3f}"
                         f"{s['n']:6d}")
    return lines


def _diversity_lines(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    lines = [f"seed diversity ({m['num_prompts']} prompts x {m['seeds']} seeds; mean pairwise distance)",
             f"  {'':<28s}{'samples':>10s}{'real styles':>13s}"]
    for key, label in (("perceptual", "perceptual"), ("pixel", "grey levels (0-255)")):
        if key in m:
            lines.append(f"  {label:<28s}{m[key]['samples']:10.4g}{m[key]['real_styles']:13.4g}")
    return lines
