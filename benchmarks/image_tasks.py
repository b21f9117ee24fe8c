"""Image tasks against their baselines, in one run: time per image and quality.

* **inpainting**: validation emoji with fixed holes (seeded boxes and brush strokes from
  ``conditioning.image.random_holes``, never the whole picture), prompt = the emoji's name. Mask-
  guided sampling with the text-to-image model (``--model``) is the baseline; a trained inpainting
  model (``--inpaint-model``) is compared with it. Scores against the original picture: perceptual
  distance (EfficientNet-Lite0 LPIPS-style), PSNR inside the hole, and FID of the filled pictures
  against the originals (kept pixels are identical by construction, so FID differences come from
  the holes; with a few hundred images FID is biased upwards: compare rows, not papers).
* **super-resolution x f** (``--upscaler``): validation pictures of both styles and every skin
  tone (the upscaler's training data is all of them) downsampled as in training
  (bicubic, antialiased), upscaled by the model and by bicubic interpolation (the baseline);
  PSNR, SSIM and perceptual distance against the originals, with and without back-projection onto
  the input (``Upscale(back_projection=...)``), and the same scores of the model's autoencoder
  reconstructing the originals: the ceiling of any latent upscaler on that autoencoder.
* **image-to-image**: time per image at strength 0.75 (and its perceptual distance to the input).

    python benchmarks/image_tasks.py [--model models/emoji-32] [--inpaint-model PATH] \
        [--upscaler models/emoji-sr-x4] [--tasks inpaint img2img sr] [--num-images 64] [--steps 25]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F

from latent_diffusion.conditioning.image import back_project, degrade, random_holes
from latent_diffusion.data import DataConfig, dataset_from_config
from latent_diffusion.evaluation.fid import fid_exact
from latent_diffusion.evaluation.inception import InceptionFeatures
from latent_diffusion.evaluation.reconstruction import default_perceptual, psnr, ssim
from latent_diffusion.model.components import decode_images, encode_images
from latent_diffusion.pipelines import ImageToImage, Inpaint, Upscale, default_model_folder
from latent_diffusion.pipelines.base import DEFAULT_UPSCALER_NAME
from latent_diffusion.pipelines.upscale import DEFAULT_BACK_PROJECTION
from latent_diffusion.pixels import images_to_pil, to_uint8

MASK_SEED = 1234
TASKS = ("inpaint", "img2img", "sr")


def validation_set(count: int, resolution: int, every_style: bool = False) -> tuple[torch.Tensor, list[str]]:
    """``count`` pictures of the validation split spread evenly over it, [-1, 1], with their names:
    Twitter base emoji (what the text-to-image models draw), or with ``every_style`` both styles
    and every skin tone (what the upscaler was trained on)."""
    config = DataConfig(name="emoji", resolution=resolution, caption_mode="name") if every_style else \
        DataConfig(name="emoji", resolution=resolution, styles=("twitter",), skin_tones=False, caption_mode="name")
    dataset = dataset_from_config(config, "validation")
    picked = torch.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().long().tolist()
    items = [dataset[i] for i in picked]
    return torch.stack([item["image"] for item in items]), [item["caption"] for item in items]


def fixed_holes(count: int, size: int) -> torch.Tensor:
    """Seeded boxes and strokes (no whole-picture masks: those are text-to-image, not inpainting)."""
    return random_holes(count, size, torch.Generator().manual_seed(MASK_SEED), whole_prob=0.0, box_prob=0.5)


def to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] in [-1, 1]."""
    import numpy as np

    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array / 127.5 - 1.0).permute(0, 3, 1, 2)


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def hole_psnr(a: torch.Tensor, b: torch.Tensor, hole: torch.Tensor) -> float:
    """PSNR over the hole pixels only (data range 2 for [-1, 1])."""
    err = ((a - b) ** 2 * hole).sum() / (hole.sum() * a.shape[1])
    return float(10 * torch.log10(4.0 / err))


def inpaint_rows(originals: torch.Tensor, names: list[str], models: dict[str, Inpaint], steps: int,
                 perceptual: Any, inception: Any) -> list[tuple]:
    holes = fixed_holes(len(originals), originals.shape[-1])
    real = inception(originals)
    rows = []
    for label, pipe in models.items():
        filled, seconds = [], 0.0
        for i, (image, hole, name) in enumerate(zip(originals, holes, names)):
            result, took = timed(lambda: pipe(image, hole, name, steps=steps, seed=i, progress=False))
            filled.append(result[0])
            seconds += took
        out = to_tensor(filled)
        rows.append((f"inpaint: {label}", seconds / len(out), float(perceptual(out, originals).mean()),
                     hole_psnr(out, originals, holes), fid_exact(inception(out), real)))
    return rows


def img2img_row(base: Inpaint, originals: torch.Tensor, names: list[str], steps: int, perceptual: Any) -> tuple:
    img2img = ImageToImage(base.components, base.model_hash)
    out, seconds = timed(lambda: [img2img(image, name, strength=0.75, steps=steps, seed=i, progress=False)[0]
                                  for i, (image, name) in enumerate(zip(originals, names))])
    return ("img2img, strength 0.75", seconds / len(originals),
            float(perceptual(to_tensor(out), originals).mean()), float("nan"), float("nan"))


def eight_bit(images: torch.Tensor) -> torch.Tensor:
    """``images`` rounded to 8 bits, as every PNG the pipelines write is."""
    return to_uint8(images).float() / 127.5 - 1


def print_super_resolution(upscaler: Upscale, originals: torch.Tensor, steps: int, perceptual: Any) -> None:
    factor = upscaler.factor
    small = degrade(originals, factor)

    def upscale(rounds: int) -> list[Any]:
        return [upscaler(image, steps=steps, seed=i, progress=False, back_projection=rounds)[0]
                for i, image in enumerate(small)]

    ups, seconds = timed(lambda: upscale(DEFAULT_BACK_PROJECTION))
    raw, raw_seconds = timed(lambda: upscale(0))
    bicubic, bicubic_seconds = timed(lambda: F.interpolate(small, scale_factor=factor, mode="bicubic",
                                                           align_corners=False).clamp(-1, 1))
    # A latent model can do no better than its autoencoder's reconstruction of the original (the
    # ceiling of every latent SR score), and back-projection onto the input helps bicubic too: both
    # rows say how much of a score is the model's.
    components = upscaler.components
    ceiling, ceiling_seconds = timed(lambda: to_tensor(images_to_pil(decode_images(
        components, encode_images(components, originals)))))
    print(f"\n{len(originals)} validation pictures (both styles, every skin tone), {steps} steps, dpmpp_2m")
    print(f"{'super-resolution x' + str(factor):<52} {'s/image':>8} {'PSNR':>8} {'SSIM':>8} {'perceptual':>11}")
    rows = (("bicubic (baseline)", bicubic, bicubic_seconds),
            (f"bicubic + back-projection ({DEFAULT_BACK_PROJECTION} rounds)",
             back_project(bicubic, small, DEFAULT_BACK_PROJECTION), bicubic_seconds),
            ("latent diffusion SR, decoder output", to_tensor(raw), raw_seconds),
            ("latent diffusion SR + back-projection (default)", to_tensor(ups), seconds),
            ("autoencoder reconstruction (SR ceiling)", ceiling, ceiling_seconds),
            ("autoencoder reconstruction + back-projection", back_project(ceiling, small, DEFAULT_BACK_PROJECTION),
             ceiling_seconds))
    for label, images, total in rows:
        images = eight_bit(images)
        sec = total / len(small)
        print(f"{label:<52} {sec:>8.4f} {float(psnr(images, originals).mean()):>8.2f} "
              f"{float(ssim(images, originals).mean()):>8.4f} {float(perceptual(images, originals).mean()):>11.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="text-to-image model folder (default: the shipped one)")
    parser.add_argument("--inpaint-model", default=None,
                        help="an inpainting model folder (image_condition masked_image)")
    parser.add_argument("--upscaler", default=None, help="a super-resolution model folder (image_condition "
                        f"low_res; default: the shipped models/{DEFAULT_UPSCALER_NAME})")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="what to measure (default all)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = args.model or default_model_folder()
    base = Inpaint.from_pretrained(model)
    originals, names = validation_set(args.num_images, base.native_size)
    perceptual = default_perceptual().eval()
    if {"inpaint", "img2img"} & set(args.tasks):
        print(f"{len(originals)} validation pictures (Twitter base emoji), {args.steps} steps, dpmpp_2m, "
              "guidance 5\n")
    rows = []
    if "inpaint" in args.tasks:
        models = {"mask-guided (text-to-image model)": base}
        if args.inpaint_model:
            models["inpainting model (concat)"] = Inpaint.from_pretrained(args.inpaint_model)
        rows += inpaint_rows(originals, names, models, args.steps, perceptual, InceptionFeatures())
    if "img2img" in args.tasks:
        rows.append(img2img_row(base, originals, names, args.steps, perceptual))
    if rows:
        print(f"{'task':<44} {'s/image':>8} {'perceptual':>11} {'PSNR hole':>10} {'FID':>8}")
        for label, sec, perc, ps, fid in rows:
            print(f"{label:<44} {sec:>8.2f} {perc:>11.4f} {ps:>10.2f} {fid:>8.1f}")
    if "sr" in args.tasks:
        upscaler = Upscale.from_pretrained(args.upscaler)
        sr_originals, _ = validation_set(args.num_images, upscaler.native_size, every_style=True)
        print_super_resolution(upscaler, sr_originals, args.steps, perceptual)


if __name__ == "__main__":
    main()
