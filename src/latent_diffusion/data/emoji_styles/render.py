"""Every source picture as a 128x128 RGB PNG on white, the cache the dataset downsamples from.

SVGs are rendered with resvg (PyPI ``resvg-py``), which implements the filters Fluent Color's
highlights use (``feGaussianBlur``); cairosvg ignores them (median 5.9/255 off on Fluent Color,
shared/docs/resources.md), so resvg is the renderer. Rasters (Fluent 3D WebP 256 px, Noto's
136x128 bitmaps, the 64 px emoji-datasource fallbacks) are composited on white, padded to a square
with white (never cropped: Noto's glyphs touch their sides) and resized with Lanczos.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from latent_diffusion.data.common import composite_on_white
from latent_diffusion.data.emoji_styles.sources import Picture

SIZE = 128
INSTALL_RESVG = "pip install 'resvg-py>=0.5'"


def require_resvg() -> None:
    """Fail early, with the install command, when the SVG renderer is missing."""
    try:
        import resvg_py  # noqa: F401
    except ImportError:
        from latent_diffusion.data.cache import PreparationError

        raise PreparationError(f"the SVG renderer resvg-py is not installed; run `{INSTALL_RESVG}`") from None


def square_on_white(image: Image.Image, size: int = SIZE) -> Image.Image:
    """RGB ``size`` x ``size``: composited on white, padded to a square, resized."""
    rgb = composite_on_white(image)
    side = max(rgb.size)
    if rgb.size != (side, side):
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        rgb = canvas
    if side != size:
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS if side > size else Image.Resampling.BICUBIC)
    return rgb


def render(picture: Picture, size: int = SIZE) -> Image.Image:
    """Decode or render one source picture; raises ValueError/OSError when it cannot be read."""
    if picture.kind == "svg":
        import resvg_py

        # Rendered at twice the size and shrunk: resvg's own anti-aliasing leaves thin strokes
        # (High Contrast outlines) lighter than a Lanczos downsample does.
        data = resvg_py.svg_to_bytes(svg_path=str(picture.path), width=2 * size, height=2 * size)
        with Image.open(io.BytesIO(bytes(data))) as image:
            image.load()
            return square_on_white(image, size)
    source = io.BytesIO(picture.data) if picture.kind == "png" else picture.path
    with Image.open(source) as image:
        image.load()
        return square_on_white(image, size)


def render_to_file(job: tuple[Picture, Path]) -> str:
    """Worker: render ``job[0]`` into the PNG ``job[1]``; returns "" or the reason it failed."""
    picture, target = job
    try:
        image = render(picture)
    except Exception as err:  # noqa: BLE001 - a bad picture is skipped and counted, never fatal
        return f"{type(err).__name__}: {str(err)[:80]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG", optimize=False, compress_level=6)
    return ""


__all__ = ["INSTALL_RESVG", "SIZE", "render", "render_to_file", "require_resvg", "square_on_white"]
