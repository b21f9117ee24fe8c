"""Sample quality against the number of model evaluations: FID/KID vs NFE for four samplers.

For DDIM, Euler, Heun and DPM-Solver++(2M) on a trained model, at about 5, 10, 20, 50 and 100
network function evaluations (NFE), ``--num-samples`` images are generated from the same prompts
(captions / labels of the split's items, as ``ldm eval`` draws them) and the same seeds, and
scored with FID and KID against the split's images (InceptionV3 features).

NFE convention: one NFE is one evaluation of the *guided* denoiser, i.e. one UNet forward pass
over the batch; classifier-free guidance runs conditional and unconditional branches in that
one pass (the batch doubles, the count does not), as in the DPM-Solver and EDM papers. NFE is
measured with a forward hook on the UNet, not assumed: DDIM, Euler and DPM-Solver++(2M) use one
per step; Heun two per step except the last step into sigma = 0 (an Euler step), so
``steps = (NFE + 1) // 2`` gives ``2 * steps - 1`` evaluations (5 -> 5, 10 -> 9, 20 -> 19, ...).
Each sampler uses its default spacing (``model.reverse_process.DEFAULT_SPACING``) unless
``--spacing`` sets one for all. DDIM with eta = 0 *is* Euler's method in these coordinates
(``sampling.samplers``), so with a shared spacing (trailing, the default of both) their rows are
identical: a built-in consistency check, not a bug.

Outputs in ``--output-dir``: ``sampler_quality.json`` (all numbers and settings),
``sampler_quality.md`` (a table) and ``sampler_quality.png`` (FID and KID vs NFE, needs
matplotlib). FID at small ``--num-samples`` is biased upwards; compare samplers at equal N only.

    python benchmarks/sampler_quality.py runs/emoji-diffusion/final --num-samples 256
    python benchmarks/sampler_quality.py MODEL --num-samples 16 --nfe 5 10 --samplers ddim heun  # quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from latent_diffusion.evaluation import runner
from latent_diffusion.io import atomic_write, atomic_write_text
from latent_diffusion.sampling import SAMPLERS as SAMPLER_FUNCTIONS
from latent_diffusion.validation import check_choice

SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m")
NFE_TARGETS = (5, 10, 20, 50, 100)
CONVENTION = ("one NFE = one UNet forward pass of the guided denoiser (CFG's conditional and unconditional "
              "branches share one batched pass); measured with a forward hook")


def steps_for(sampler: str, nfe: int) -> int:
    """Sampler steps that use about ``nfe`` evaluations (Heun: 2 per step, 1 for the last)."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else nfe


class CallCounter:
    """Counts forward calls of a module while installed (``with`` block)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls, self.handle = module, 0, None

    def __enter__(self) -> "CallCounter":
        self.handle = self.module.register_forward_hook(lambda *_: self._count())
        return self

    def _count(self) -> None:
        self.calls += 1

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def measure(components, conditions, settings: runner.EvalSettings, extractor, reference: torch.Tensor,
            sampler: str, nfe: int, spacing: str | None) -> dict[str, Any]:
    """Generate with ``sampler`` at about ``nfe`` evaluations and score the images."""
    steps = steps_for(sampler, nfe)
    count = settings.num_samples
    batches = -(-count // settings.batch_size)
    started = time.perf_counter()
    with CallCounter(components.unet) as counter:
        images = runner.generate_images(components, conditions, count, sampler=sampler, steps=steps,
                                        guidance=settings.guidance, seed=settings.seed,
                                        batch_size=settings.batch_size, spacing=spacing)
    seconds = time.perf_counter() - started
    scores = runner.fid_kid(reference, runner.features_of(extractor, images, settings.batch_size),
                            settings.kid_subsets, settings.seed)
    used_spacing = spacing or runner.DEFAULT_SPACING.get(sampler, "trailing")
    return {"sampler": sampler, "steps": steps, "nfe": counter.calls / batches, "target_nfe": nfe,
            "spacing": used_spacing, "seconds_per_image": seconds / count, **scores}


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    """The results as a markdown table."""
    lines = [header, "", "| sampler | steps | NFE | FID | KID ×10³ | s / image |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']:g} | {r['fid']:.2f} | "
                     f"{1e3 * r['kid']:.2f} ± {1e3 * r['kid_std']:.2f} | {r['seconds_per_image']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """FID and KID against NFE, one line per sampler, log-scaled NFE axis."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    # Distinct line styles: DDIM (eta = 0) and Euler are the same method and coincide when they share
    # a spacing (they do by default), so one curve would otherwise hide the other.
    styles = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D")]
    for number, sampler in enumerate(dict.fromkeys(r["sampler"] for r in rows)):
        mine = sorted((r for r in rows if r["sampler"] == sampler), key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in mine]
        line, marker = styles[number % len(styles)]
        axes[0].plot(nfe, [r["fid"] for r in mine], linestyle=line, marker=marker, label=sampler)
        axes[1].errorbar(nfe, [1e3 * r["kid"] for r in mine], yerr=[1e3 * r["kid_std"] for r in mine],
                         linestyle=line, marker=marker, capsize=3, label=sampler)
    for axis, name in zip(axes, ("FID", "KID ×10³")):
        axis.set_xscale("log")
        axis.set_xlabel("NFE (guided denoiser evaluations)")
        axis.set_ylabel(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a diffusion model folder (model_index.json)")
    parser.add_argument("--data", default="emoji")
    parser.add_argument("--data-path", default=None)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num-samples", type=int, default=64, help="generated images per (sampler, NFE)")
    parser.add_argument("--num-reference", type=int, default=None, help="real images (default: the whole split)")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFE_TARGETS))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--spacing", default=None, help="one spacing for every sampler (default: each its own)")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default 4; 1 if unconditional)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default ~/.cache/latent-diffusion/features)")
    parser.add_argument("--output-dir", default="benchmarks/results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every (sampler, NFE) pair and write the JSON, markdown and PNG."""
    args = parse_args(argv)
    settings = runner.EvalSettings(model=args.model, data=args.data, data_path=args.data_path, split=args.split,
                                   num_samples=args.num_samples, num_reference=args.num_reference,
                                   metrics=("fid",), guidance=args.guidance, seed=args.seed,
                                   batch_size=args.batch_size, kid_subsets=args.kid_subsets, device=args.device)
    for sampler in args.samplers:
        check_choice("samplers", sampler, sorted(SAMPLER_FUNCTIONS))  # before any slow work
    if min(args.nfe) < 1:
        raise SystemExit(f"--nfe values must be >= 1, got {args.nfe}")
    device = runner.resolve_device(args.device)
    model = runner.load_model(settings.model, device)
    if model.components is None:
        raise SystemExit(f"{args.model!r} is an autoencoder folder; this benchmark needs a diffusion model")
    settings = runner.resolve_settings(settings, model)
    channels = model.autoencoder.config.in_channels
    dataset = runner.build_eval_dataset(settings, channels)
    extractor = runner.default_extractor(device)
    reference = runner.reference_features(dataset, extractor, settings, channels, args.cache_dir, progress=True)
    conditions = runner.split_conditions(model.components, dataset,
                                         runner.drawn_indices(len(dataset), settings.num_samples, settings.seed))
    rows = []
    for sampler in args.samplers:
        for nfe in args.nfe:
            rows.append(measure(model.components, conditions, settings, extractor, reference, sampler, nfe,
                                args.spacing))
            r = rows[-1]
            print(f"{sampler:9s} steps {r['steps']:3d}  NFE {r['nfe']:5g}  FID {r['fid']:8.2f}  "
                  f"KID {r['kid']:.4f}  {r['seconds_per_image']:.3f} s/image", flush=True)
    header = (f"Sampler quality of `{model.path}` (hash {model.hash}): {settings.num_samples} samples vs "
              f"{rows[0]['num_reference']} {settings.data}/{settings.split} images, guidance {settings.guidance}, "
              f"seed {settings.seed}. NFE: {CONVENTION}.")
    output = Path(args.output_dir)
    result = {"model": runner.model_summary(model), "settings": settings.to_dict(), "samplers": args.samplers,
              "spacing": args.spacing, "convention": CONVENTION, "feature_extractor": extractor.name, "rows": rows}
    atomic_write_text(output / "sampler_quality.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(output / "sampler_quality.md", markdown(rows, header))
    plot(rows, output / "sampler_quality.png", f"{model.path.name} ({model.hash}), N={settings.num_samples}")
    print(f"wrote {output / 'sampler_quality.json'}, .md and .png")


if __name__ == "__main__":
    main()
