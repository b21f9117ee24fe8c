"""The four tasks on the shipped models give the pixels they gave before the task-table redesign.

``tests/data/task-pins/*.png`` were written by ``python tests/test_task_pins.py`` with the code of
commit fde4562 (before pipelines took ``SamplingOptions`` and were planned through the task table),
so these tests fail if a refactoring of the call plumbing changes what a call draws. (When a shipped
model is retrained, the pins are rewritten by that old code with the new weights, as they were for
the default's 15,500-step UNet.) fp32 on the
torch backend, a few steps, so the pins do not depend on the CPU's bf16 units. On the machine that
wrote them the pixels are identical; another CPU's fp32 kernels may round differently, hence the
tolerance of a few grey levels (a changed argument, seed or schedule moves thousands of pixels by
far more).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_diffusion.pipelines import ImageToImage, Inpaint, TextToImage, Upscale

PINS = Path(__file__).parent / "data" / "task-pins"
MAX_LEVELS = 3  # largest per-pixel difference allowed across CPUs
MAX_MEAN = 0.05  # mean absolute difference allowed, grey levels


def make_pins() -> dict[str, Image.Image]:
    """Each task's image (arguments chosen so each task's own argument matters)."""
    text = TextToImage.from_pretrained(precision="fp32")
    drawn = text("red heart, 3d style", steps=6, seed=3, progress=False).images[0]
    base = dict(steps=6, seed=5, progress=False)
    image = ImageToImage(text.components, text.model_hash)
    moved = image(drawn, "blue heart", strength=0.6, guidance=4.0, **base).images[0]
    mask = Image.new("L", drawn.size, 0)
    mask.paste(255, (16, 16, 48, 40))
    inpaint = Inpaint(text.components, text.model_hash)
    filled = inpaint(drawn, mask, "grinning face", negative_prompt="red", sampler="euler", **base).images[0]
    upscale = Upscale.from_pretrained(precision="fp32")
    small = drawn.resize((16, 16), Image.BICUBIC)
    big = upscale(small, back_projection=2, steps=4, seed=7, progress=False).images[0]
    return {"txt2img": drawn, "img2img": moved, "inpaint": filled, "upscale": big}


@pytest.fixture(scope="module")
def made() -> dict[str, Image.Image]:
    return make_pins()


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint", "upscale"])
def test_task_draws_what_it_drew_before_the_redesign(made: dict[str, Image.Image], task: str) -> None:
    pinned = np.asarray(Image.open(PINS / f"{task}.png").convert("RGB")).astype(np.int16)
    now = np.asarray(made[task].convert("RGB")).astype(np.int16)
    assert now.shape == pinned.shape
    diff = np.abs(now - pinned)
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MAX_MEAN, (task, int(diff.max()), float(diff.mean()))


if __name__ == "__main__":  # rewrite the pins (only ever with the code they are meant to pin)
    PINS.mkdir(parents=True, exist_ok=True)
    for name, picture in make_pins().items():
        picture.save(PINS / f"{name}.png")
        print("wrote", PINS / f"{name}.png", file=sys.stderr)
