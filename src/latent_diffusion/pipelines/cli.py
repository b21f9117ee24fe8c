"""``ldm generate``, ``img2img``, ``inpaint``, ``upscale``: to PNG files that carry how they were made.

    ldm generate "a red heart" -n 4 --seed 7 -o heart.png     # heart-0.png ... heart-3.png
    ldm generate "a red heart" -n 4 --grid                    # ldm-0.png, one 2x2 grid
    ldm img2img --image heart.png --prompt "a blue heart" --strength 0.6
    ldm inpaint --image face.png --mask mask.png --prompt "a grinning face"
    ldm upscale small.png -o big.png                          # the shipped 16 -> 64 px upscaler

Everything the user can get wrong (arguments, the model folder, the output path) is checked
before any denoising, so a mistake costs a second, not a run, and never leaves a partial file.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from latent_diffusion.backends import BACKENDS
from latent_diffusion.cli import UsageError
from latent_diffusion.hardware import PRECISIONS
from latent_diffusion.pipelines.base import DECODERS, DEFAULT_MODEL_NAME, DEFAULT_UPSCALER_NAME
from latent_diffusion.pipelines.options import SamplingOptions
from latent_diffusion.pipelines.tasks import TASKS, Task
from latent_diffusion.pipelines.upscale import DEFAULT_BACK_PROJECTION
from latent_diffusion.sampling import SAMPLERS

DEFAULT_STEM = "ldm-{seed}"


def register(subparsers: Any) -> None:
    """Add a command per task of the task table (``ldm generate``, ``img2img``, ``inpaint``, ``upscale``)."""
    def add(name: str) -> argparse.ArgumentParser:
        task = TASKS[name]
        parser = subparsers.add_parser(task.command, help=task.summary, description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(func=run_task, task=name)
        return parser

    parser = add("txt2img")
    parser.add_argument("prompt", nargs="?", default=None,
                        help='the text prompt ("" for an unconditional image)')
    parser.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                        help="the class to draw, for class-conditional models (instead of PROMPT)")
    _add_common_arguments(parser)

    parser = add("img2img")
    parser.add_argument("--image", type=Path, required=True, metavar="IN", help="the input image (square)")
    parser.add_argument("--prompt", default="", help='the text prompt (default "")')
    parser.add_argument("--strength", type=float, default=0.75,
                        help="how much to change, 0 (keep) to 1 (redraw); default 0.75")
    _add_common_arguments(parser)

    parser = add("inpaint")
    parser.add_argument("--image", type=Path, required=True, metavar="IN", help="the input image (square)")
    parser.add_argument("--mask", type=Path, required=True, metavar="MASK",
                        help="black-and-white mask of the image's size: white = repaint, black = keep")
    parser.add_argument("--prompt", default="", help='the text prompt (default "")')
    parser.add_argument("--strength", type=float, default=1.0,
                        help="1 fills the hole from noise; lower keeps some of the old content (default 1)")
    parser.add_argument("--method", default="auto", choices=("auto", "masked", "concat"),
                        help="masked: any model; concat: an inpainting model; auto picks (default)")
    _add_common_arguments(parser)

    parser = add("upscale")
    parser.add_argument("image", type=Path, metavar="IN", help="the low-resolution input image (square)")
    parser.add_argument("--prompt", default="", help='the text prompt, for text-conditioned upscalers (default "")')
    parser.add_argument("--back-projection", dest="back_projection", type=int, default=DEFAULT_BACK_PROJECTION, metavar="N",
                        help="rounds pulling the output onto the input so that downscaling it gives the input "
                             f"back (0 = off; default {DEFAULT_BACK_PROJECTION})")
    _add_common_arguments(parser, guidance=1.0, size=False, model_help="a super-resolution model folder "
                          f"(image_condition low_res; default: the shipped models/{DEFAULT_UPSCALER_NAME})")


def _add_common_arguments(parser: argparse.ArgumentParser, guidance: float = 5.0, size: bool = True,
                          model_help: str | None = None) -> None:
    """The sampling, model and output options every generating command shares; ``model_help``
    replaces the help of ``--model`` (for commands whose default is another shipped model)."""
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images to make (default 1)")
    # None: the model's own default (25 / dpmpp_2m; a consistency model's folder names its own).
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default 25; a consistency model's own, e.g. 4)")
    parser.add_argument("--sampler", default=None,
                        help=f"one of {', '.join(sorted(SAMPLERS))} (default dpmpp_2m; lcm for a consistency model)")
    parser.add_argument("--guidance", type=float, default=None,
                        help=f"classifier-free guidance scale (default {guidance:g}, or a consistency model's own; "
                             "1 = none)")
    parser.add_argument("--rescale", type=float, default=0.0, help="guidance rescale in [0, 1] (default 0)")
    parser.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: none)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same images")
    if size:
        parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's own)")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help=model_help or f"model folder (default: the shipped models/{DEFAULT_MODEL_NAME})")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="PATH",
                        help="PNG to write; several images become PATH-0.png, PATH-1.png, ... "
                             "(default: ldm-SEED.png in the current folder; a folder: that name inside it)")
    parser.add_argument("--grid", action="store_true", help="write all images as one grid PNG")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    add_precision_argument(parser)
    add_backend_argument(parser)
    add_decoder_argument(parser)
    parser.add_argument("--vae-tiling", action="store_true",
                        help="decode large images in overlapping tiles (less memory, seams blended)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def output_paths(output: Path | None, seed: int, count: int) -> list[Path]:
    """The PNG paths to write ``count`` files to, checked to be writable (UsageError otherwise)."""
    target = Path.cwd() / f"{DEFAULT_STEM.format(seed=seed)}.png" if output is None else output
    if target.is_dir():
        target = target / f"{DEFAULT_STEM.format(seed=seed)}.png"
    if target.suffix == "":
        target = target.with_suffix(".png")
    if target.suffix.lower() != ".png":
        raise UsageError(f"output {str(target)!r} must be a .png file (the metadata lives in PNG text "
                         f"chunks); use e.g. -o {target.with_suffix('.png')}")
    paths = [target] if count == 1 else [target.with_name(f"{target.stem}-{i}{target.suffix}") for i in range(count)]
    _check_folder_writable(target.parent)
    for path in paths:
        if path.is_dir():
            raise UsageError(f"output {str(path)!r} is a folder; choose another -o PATH")
    return paths


def _check_folder_writable(folder: Path) -> None:
    from latent_diffusion.io import check_writable_folder

    try:
        check_writable_folder(folder)
    except ValueError as err:
        raise UsageError(str(err)) from None


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|openvino`` (default torch), shared by the generating commands and ``ldm serve``."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="where the UNet and decoder run: torch (default) or openvino (pip install -e "
                             "'.[openvino]'; graphs exported once per image size and cached)")


def add_decoder_argument(parser: argparse.ArgumentParser) -> None:
    """``--decoder tiny|full`` (default: the model's own), shared by the generating commands and ``ldm serve``."""
    parser.add_argument("--decoder", default=None, choices=DECODERS,
                        help="what turns latents into pixels: the model folder's tiny decoder (its default when it "
                             "has one: faster, slightly softer) or the autoencoder's full decoder")


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|fp32|bf16`` (default auto), shared by the generating commands and ``ldm serve``."""
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="bf16 runs the UNet and decoder under bf16 autocast; auto (default) picks it where "
                             "the device has bf16 matrix units (AMX / AVX512-BF16 CPUs, CUDA), fp32 elsewhere")


def load_pipeline(model: Path | None, device: str, pipeline_class: Any = None, precision: str = "fp32",
                  backend: str = "torch", decoder: str | None = None) -> Any:
    """``pipeline_class.from_pretrained`` (default TextToImage) with ``decoder`` set (None: the model's
    own), any failure a one-line UsageError."""
    from latent_diffusion.backends import BackendError
    from latent_diffusion.backends.openvino import BackendUnavailable
    from latent_diffusion.hardware import resolve_device
    from latent_diffusion.pipelines.base import WrongModelError
    from latent_diffusion.pipelines.text_to_image import TextToImage

    try:
        pipe = (pipeline_class or TextToImage).from_pretrained(model, device=resolve_device(device),
                                                               precision=precision, backend=backend)
    except (FileNotFoundError, WrongModelError, BackendError, BackendUnavailable) as err:
        raise UsageError(_one_line(err)) from err
    except (ValueError, OSError, KeyError, TypeError, RuntimeError) as err:
        # A corrupt folder fails in many ways (bad JSON, bad config field, truncated weights).
        raise UsageError(f"cannot load the model folder {str(model)!r}: {_one_line(err)}; pass --model "
                         "with a complete folder written by training (runs/<name>/final)") from err
    if decoder is not None:
        try:
            pipe.set_decoder(decoder)
        except ValueError as err:
            raise UsageError(_one_line(err)) from err
    return pipe


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def grid_image(images: list[Any]) -> Any:
    """The images tiled in a near-square grid (``make_grid``'s layout: 2 px black padding)."""
    import numpy as np
    import torch
    from PIL import Image

    from latent_diffusion.pixels import make_grid

    arrays = [np.array(image) for image in images]  # a writable copy for torch
    pixels = torch.stack([torch.from_numpy(a if a.ndim == 3 else a[..., None]) for a in arrays]).permute(0, 3, 1, 2)
    grid = make_grid(pixels, nrow=math.ceil(math.sqrt(len(images))))
    return Image.fromarray(grid if grid.shape[-1] == 3 else grid[..., 0])


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The command line's sampling arguments as one checked :class:`SamplingOptions` (a bad one is
    reported before any model is loaded)."""
    return SamplingOptions(num_images=args.num_images, steps=args.steps, sampler=args.sampler,
                           guidance=args.guidance, negative_prompt=args.negative, seed=args.seed,
                           size=getattr(args, "size", None), rescale=args.rescale)


def run_task(args: argparse.Namespace) -> int:
    """Any task of the table: check the arguments and the input files, load the task's pipeline,
    plan the call (the task's own checks, before any denoising), run it, write the PNGs atomically."""
    task: Task = TASKS[args.task]
    options = sampling_options(args)
    prompt = _prompt(args, task)
    images = []
    for name in task.images:
        path = getattr(args, name)
        if not path.is_file():
            flag = "IN" if task.name == "upscale" else f"--{name}"
            raise UsageError(f"{flag} {str(path)!r} does not exist or is not a file; check the path")
        images.append(str(path))
    paths = output_paths(args.output, args.seed, 1 if args.grid else args.num_images)
    pipe = load_pipeline(args.model, args.device, task.pipeline(), precision=args.precision, backend=args.backend,
                         decoder=args.decoder)
    if task.name == "txt2img" and args.class_name is not None and pipe.components.conditioner.kind != "class":
        raise UsageError(f"--class needs a class-conditional model; this one is conditioned on "
                         f"{pipe.components.conditioner.kind!r}: pass the text as PROMPT instead")
    if args.vae_tiling:
        pipe.enable_vae_tiling()
    result = _reporting_warnings(args.command, lambda: pipe.plan(*images, prompt, options, **task.arguments_of(args))
                                 .run(progress=not args.no_progress))
    return write_results(result, paths, args.grid)


def _prompt(args: argparse.Namespace, task: Task) -> str:
    if task.name != "txt2img":
        return args.prompt
    if (args.prompt is None) == (args.class_name is None):
        raise UsageError("give either a PROMPT or --class NAME (for a class-conditional model), not both "
                         'and not neither; use "" for an unconditional image')
    return args.prompt if args.class_name is None else args.class_name


def _reporting_warnings(command: str, work: Any) -> Any:
    """``work()``; print each warning it raised once, as one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = work()
    for message in dict.fromkeys(_one_line(w.message) for w in caught):  # each once, in order
        print(f"ldm {command}: warning: {message}", file=sys.stderr)
    return result


def write_results(result: Any, paths: list[Path], grid: bool) -> int:
    """Write a result's images (or their grid) as PNGs with metadata: all files or none."""
    from latent_diffusion.pipelines.png import write_png

    if grid:
        items = [(grid_image(result.images), _grid_metadata(result.metadata[0]))]
    else:
        items = list(zip(result.images, result.metadata))
    written: list[Path] = []
    try:
        for path, (image, metadata) in zip(paths, items):
            written.append(write_png(path, image, metadata))
    except BaseException as err:
        for path in written:  # all files or none: a half-written batch is not a result
            path.unlink(missing_ok=True)
        if isinstance(err, OSError):  # e.g. a full disk: one line, like every other failure
            raise UsageError(f"could not write the images: {_one_line(err)}; free some space or "
                             "choose another -o PATH") from err
        raise
    for path in written:
        print(f"wrote {path}")
    return 0


def _grid_metadata(first: Any) -> Any:
    from dataclasses import replace

    return replace(first, index=None)


__all__ = ["grid_image", "load_pipeline", "output_paths", "register", "run_task", "sampling_options", "write_results"]
