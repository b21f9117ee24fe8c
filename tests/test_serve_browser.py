"""The `ldm serve` page end to end in headless Chromium (Debian's, driven by Playwright).

Chromium comes from `scripts/install-chromium.sh` (run by `.ci/run`); without it this test skips
with the reason, except under CI (CI=true), where a missing browser is a failure. A screenshot of
the page after both generations is saved to test-artifacts/serve-page.png.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_diffusion.pipelines import read_generation_metadata
from latent_diffusion.serve import ServeSettings, create_app
from latent_diffusion.serve.server import BackgroundServer
from test_serve_api import TINY_LIMITS, picture, tiny_generator

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 20_000


def chromium_path() -> str | None:
    """Debian's Chromium: $LDM_CHROMIUM, or chromium / chromium-browser on PATH."""
    candidates = [os.environ.get("LDM_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test: .ci/run installs Chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        unavailable("Chromium is not installed: run `bash scripts/install-chromium.sh` (Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server():
    generator = tiny_generator(upscale=False)
    with BackgroundServer(create_app(generator, ServeSettings(max_waiting=4, limits=TINY_LIMITS))) as server:
        yield server


def data_url_pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def test_generate_then_paint_a_mask_and_inpaint(browser, server: BackgroundServer, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url)
    page.wait_for_selector("#sampler option[value=euler]", state="attached")
    # Keep every status text the page shows, so the per-step progress can be checked afterwards.
    # Each mutation record's own text: several events read in one chunk change the status several
    # times before the observer runs, and reading the element then would see only the last one.
    page.evaluate("""() => {
        window.statuses = [];
        new MutationObserver(records => {
            for (const r of records) {
                if (r.type === 'characterData') window.statuses.push(r.target.textContent);
                for (const node of r.addedNodes) window.statuses.push(node.textContent);
            }
        }).observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
    }""")

    # ---- text to image, random seed ----
    page.fill("#prompt", "red heart")
    page.fill("#steps", "12")
    page.click("#generate")
    figure = page.wait_for_selector("figure.result[data-task=txt2img]")
    seed = int(figure.get_attribute("data-seed"))
    assert f"seed {seed}" in figure.inner_text()
    assert re.search(rf"done: seed {seed}", page.inner_text("#status"))
    steps_seen = [s for s in page.evaluate("window.statuses") if s.startswith("step ")]
    assert steps_seen and steps_seen[-1] == "step 12 / 12", steps_seen
    assert page.evaluate("document.getElementById('progress').value") == 12
    width = page.evaluate("document.querySelector('figure.result img').naturalWidth")
    assert width == 16

    # The download is the PNG with its metadata.
    with page.expect_download() as download_info:
        figure.query_selector("a[download]").click()
    path = tmp_path / "download.png"
    download_info.value.save_as(path)
    metadata = read_generation_metadata(path)
    assert metadata.seed == seed and metadata.prompt == "red heart" and metadata.steps == 12

    # ---- inpainting: upload, paint a stroke across the middle, generate ----
    source = picture(32, seed=4)
    upload = tmp_path / "input.png"
    source.save(upload)
    page.click("#tabs button[data-task=inpaint]")
    page.set_input_files("#image-file", str(upload))
    page.wait_for_function("document.getElementById('mask-canvas').width === 32")
    page.fill("#brush", "6")
    box = page.locator("#mask-canvas").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, y, steps=8)
    page.mouse.up()
    page.fill("#prompt", "a blue heart")
    page.uncheck("#random-seed")
    page.fill("#seed", "5")
    page.fill("#steps", "6")
    page.click("#generate")
    result = page.wait_for_selector("figure.result[data-task=inpaint]")
    assert "seed 5" in result.inner_text()
    out = data_url_pixels(result.query_selector("img").get_attribute("src"))
    # The page sent the centre-cropped 32 px upload; the 16 px model resized it. Away from the
    # painted band the output is the (resized) input exactly; inside, the model repainted it.
    expected = np.asarray(source.resize((16, 16), Image.Resampling.BICUBIC)).astype(int)
    np.testing.assert_array_equal(out[:3], expected[:3])
    np.testing.assert_array_equal(out[-3:], expected[-3:])
    assert np.abs(out[7:9, 6:10] - expected[7:9, 6:10]).mean() > 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_a_bad_request_shows_the_servers_message(browser, server: BackgroundServer) -> None:
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url)
    page.wait_for_selector("#sampler option", state="attached")
    page.fill("#prompt", "x")
    page.fill("#guidance", "500")  # the form has no upper bound here; the API has
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('422')")
    assert "guidance: Input should be less than or equal to 100" in page.inner_text("#status")
    assert page.is_enabled("#generate")  # ready for the next try
    page.click("#tabs button[data-task=upscale]")
    assert "--upscaler" in page.inner_text("#task-note")
    assert page.is_disabled("#generate")
    page.close()
