"""The HTTP API of `ldm serve`: every operation on a tiny model, bad input, the queue over HTTP,
disconnects, and a bounded load test on loopback."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from latent_diffusion import cli
from latent_diffusion.pipelines import TextToImage, read_generation_metadata
from latent_diffusion.pipelines.upscale import Upscale
from latent_diffusion.serve import Generator, Limits, ServeSettings, create_app
from latent_diffusion.serve.server import BackgroundServer
from latent_diffusion.unet import UNet
from test_text_to_image import tiny_components

STEPS = 4


def tiny_upscaler():
    """A tiny x4 super-resolution model: the tiny UNet widened by the 3 low-res image channels."""
    base = tiny_components()
    torch.manual_seed(2)
    unet = UNet(base.unet.config.replace(concat_channels=3))
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return type(base)(base.autoencoder, unet, base.conditioner, base.diffusion, base.resolution,
                      image_condition="low_res", low_res_factor=4)


TINY_LIMITS = Limits(max_steps=150, max_images=4, max_input_side=256)


def tiny_generator(upscale: bool = True) -> Generator:
    text = TextToImage.from_pretrained(tiny_components())
    return Generator.from_components(text, Upscale.from_pretrained(tiny_upscaler()) if upscale else None)


def png_b64(image: Image.Image, data_url: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def picture(size: int = 16, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def box_mask(size: int = 16) -> Image.Image:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:10, 6:11] = 255
    return Image.fromarray(mask)


def decode(item: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(item["png_base64"])))
    image.load()
    return image


@pytest.fixture(scope="module")
def generator() -> Generator:
    return tiny_generator()


@pytest.fixture(scope="module")
def client(generator: Generator):
    settings = ServeSettings(max_waiting=2, max_body_bytes=2**20, limits=TINY_LIMITS)
    with TestClient(create_app(generator, settings)) as client:
        yield client


# ---- schema and page ---------------------------------------------------------------------------
def test_openapi_documents_every_operation(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for task in ("txt2img", "img2img", "inpaint", "upscale"):
        operation = schema["paths"][f"/api/{task}"]["post"]
        assert {"200", "413", "422", "429"} <= set(operation["responses"])
    txt2img = schema["components"]["schemas"]["Txt2ImgRequest"]
    assert "prompt" in txt2img["required"]
    # steps, sampler and guidance may be null (the model's own default: a consistency model has its own).
    steps = {k: v for option in txt2img["properties"]["steps"]["anyOf"] for k, v in option.items()}
    assert steps["minimum"] == 1 and {"type": "null"} in txt2img["properties"]["steps"]["anyOf"]
    samplers = [option for option in txt2img["properties"]["sampler"]["anyOf"] if "enum" in option]
    assert "dpmpp_2m" in samplers[0]["enum"] and "lcm" in samplers[0]["enum"]


def test_the_page_and_its_files_are_served(client: TestClient, generator: Generator) -> None:
    from latent_diffusion.pipelines.budget import largest_side, memory_budget

    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text and "/static/app.js" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    info = client.get("/api/info").json()
    assert info["tasks"] == ["txt2img", "img2img", "inpaint", "upscale"]
    assert info["native_size"] == 16 and info["upscale_factor"] == 4 and info["upscale_input_size"] == 4
    assert info["sampling_defaults"] == {"sampler": "dpmpp_2m", "steps": 25, "guidance": 5.0}
    # The memory budget's answer, the same the CLI's size check gives (pipelines/budget.py).
    text = generator.pipelines["txt2img"]
    assert info["max_image_side"] == largest_side(text.components, text.size_multiple, 1, memory_budget()) > 16
    health = client.get("/api/health").json()
    assert health["limits"] == info["limits"] and health["max_image_side"] == info["max_image_side"]


# ---- the operations ----------------------------------------------------------------------------
def test_txt2img_returns_the_pipelines_pngs_with_metadata(client: TestClient, generator: Generator,
                                                          tmp_path: Path) -> None:
    body = {"prompt": "red heart", "seed": 7, "steps": STEPS, "num_images": 2, "guidance": 3,
            "negative_prompt": "blue", "sampler": "euler"}
    response = client.post("/api/txt2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["seed"] == 7 and len(data["images"]) == 2 and data["timings"]["denoise"] > 0
    expected = generator.pipelines["txt2img"]("red heart", num_images=2, steps=STEPS, seed=7, guidance=3.0,
                                              negative_prompt="blue", sampler="euler", progress=False)
    for item, image in zip(data["images"], expected.images):
        got = decode(item)
        assert got.format == "PNG" and got.size == (16, 16) == (item["width"], item["height"])
        np.testing.assert_array_equal(np.asarray(got), np.asarray(image))  # the API adds nothing
        path = tmp_path / f"{item['index']}.png"
        path.write_bytes(base64.b64decode(item["png_base64"]))
        metadata = read_generation_metadata(path)
        assert metadata.seed == 7 and metadata.prompt == "red heart" and metadata.index == item["index"]
        assert item["metadata"]["negative_prompts"] == ["blue"] and item["metadata"]["sampler"] == "euler"


def test_no_seed_picks_one_and_returns_it(client: TestClient) -> None:
    first = client.post("/api/txt2img", json={"prompt": "cat", "steps": STEPS}).json()
    again = client.post("/api/txt2img", json={"prompt": "cat", "steps": STEPS, "seed": first["seed"]}).json()
    assert 0 <= first["seed"] < 2**32
    assert first["images"][0]["png_base64"] == again["images"][0]["png_base64"]


def test_img2img(client: TestClient) -> None:
    body = {"image": png_b64(picture(32), data_url=True), "prompt": "cat", "strength": 0.5, "seed": 1,
            "steps": STEPS}
    data = client.post("/api/img2img", json=body).json()
    image = decode(data["images"][0])
    assert image.size == (16, 16)  # resized to the model's size
    metadata = data["images"][0]["metadata"]
    assert metadata["task"] == "img2img" and metadata["strength"] == 0.5 and metadata["image_hash"]


def test_inpaint_keeps_every_unmasked_pixel(client: TestClient) -> None:
    source, mask = picture(), box_mask()
    body = {"image": png_b64(source), "mask": png_b64(mask), "prompt": "cat", "seed": 3, "steps": STEPS}
    response = client.post("/api/inpaint", json=body)
    assert response.status_code == 200, response.text
    out = np.asarray(decode(response.json()["images"][0])).astype(int)
    keep = np.asarray(mask) == 0
    np.testing.assert_array_equal(out[keep], np.asarray(source).astype(int)[keep])
    assert np.abs(out[~keep] - np.asarray(source).astype(int)[~keep]).mean() > 1  # the hole was repainted
    assert response.json()["images"][0]["metadata"]["task"].startswith("inpaint")


def test_upscale_makes_the_image_four_times_larger(client: TestClient) -> None:
    data = client.post("/api/upscale", json={"image": png_b64(picture(4)), "seed": 0, "steps": STEPS}).json()
    assert decode(data["images"][0]).size == (16, 16)
    assert data["images"][0]["metadata"]["task"] == "upscale"
    assert data["images"][0]["metadata"]["back_projection"] == 3
    raw = client.post("/api/upscale", json={"image": png_b64(picture(4)), "seed": 0, "steps": STEPS,
                                            "back_projection": 0}).json()
    assert raw["images"][0]["metadata"]["back_projection"] == 0
    assert not np.array_equal(np.asarray(decode(raw["images"][0])), np.asarray(decode(data["images"][0])))
    bad = client.post("/api/upscale", json={"image": png_b64(picture(4)), "back_projection": -1})
    assert bad.status_code == 422 and "back_projection" in bad.text


def test_upscale_without_an_upscaler_says_how_to_enable_it() -> None:
    with TestClient(create_app(tiny_generator(upscale=False))) as client:
        response = client.post("/api/upscale", json={"image": png_b64(picture(4))})
        assert response.status_code == 409 and "--upscaler" in response.json()["detail"]
        assert client.get("/api/info").json()["tasks"] == ["txt2img", "img2img", "inpaint"]


def test_two_apps_on_one_generator_keep_their_own_limits(generator: Generator) -> None:
    strict = create_app(generator, ServeSettings(limits=Limits(max_steps=3, max_images=1)))
    loose = create_app(generator, ServeSettings(limits=Limits(max_steps=8, max_images=2)))
    with TestClient(strict) as a, TestClient(loose) as b:
        assert a.get("/api/info").json()["limits"]["max_steps"] == 3
        assert b.get("/api/info").json()["limits"]["max_steps"] == 8
        refused = a.post("/api/txt2img", json={"prompt": "cat", "steps": 4, "seed": 0})
        assert refused.status_code == 422 and "(3)" in refused.json()["detail"]
        assert b.post("/api/txt2img", json={"prompt": "cat", "steps": 4, "seed": 0}).status_code == 200


def test_streaming_reports_every_step_then_the_result(client: TestClient) -> None:
    with client.stream("POST", "/api/txt2img?stream=1", json={"prompt": "cat", "steps": 6, "seed": 0}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    progress = [e["step"] for e in events if e["event"] == "progress"]
    assert progress[-1] == 6 and progress == sorted(progress) and len(set(progress)) >= 3
    assert all(e["total"] == 6 for e in events if e["event"] == "progress")
    assert events[-1]["event"] == "result" and events[-1]["result"]["seed"] == 0
    assert (events[-2]["event"], events[-2]["step"]) == ("progress", 6)  # the last step, never coalesced away


def test_img2img_progress_counts_the_steps_its_strength_runs(client: TestClient) -> None:
    body = {"image": png_b64(picture()), "strength": 0.5, "steps": 10, "seed": 0}
    with client.stream("POST", "/api/img2img?stream=1", json=body) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[-1]["event"] == "result" and events[-1]["total"] == 5 and events[-1]["step"] == 5


def test_a_waiting_request_streams_its_place_in_line(generator: Generator) -> None:
    app = create_app(generator, ServeSettings(concurrency=1, max_waiting=2, limits=TINY_LIMITS))
    with TestClient(app) as client:
        gate = threading.Event()
        blocker = app.state.get_queue().submit(lambda job: gate.wait(10))  # the only worker is busy
        try:
            with client.stream("POST", "/api/txt2img?stream=1", json={"prompt": "x", "steps": 3}) as response:
                lines = response.iter_lines()
                first = json.loads(next(lines))
                assert first["event"] == "queued" and first["position"] == 1 and first["state"] == "waiting"
                assert client.get("/api/health").json()["queue"]["waiting"] == 1
                gate.set()
                events = [json.loads(line) for line in lines if line]
        finally:
            gate.set()
        assert blocker.wait(5)
        assert events[-1]["event"] == "result" and events[-1]["position"] is None


# ---- bad input ---------------------------------------------------------------------------------
BAD = [
    ("txt2img", {"steps": 4}, 422, r"prompt: Field required"),
    ("txt2img", {"prompt": 5}, 422, r"prompt: Input should be a valid string"),
    ("txt2img", {"prompt": "x", "steps": "10"}, 422, r"steps: Input should be a valid integer"),
    ("txt2img", {"prompt": "x", "steps": 0}, 422, r"steps: Input should be greater than or equal to 1"),
    ("txt2img", {"prompt": "x", "steps": 151}, 422, r"steps=151 is more than this server allows \(150\)"),
    ("txt2img", {"prompt": "x", "num_images": 5}, 422, r"num_images=5 is more than this server allows"),
    ("txt2img", {"prompt": "x", "sampler": "plms"}, 422, r"sampler: Input should be"),
    ("txt2img", {"prompt": "x", "guidance": -1}, 422, r"guidance: Input should be greater than or equal to 0"),
    ("txt2img", {"prompt": "x", "seed": -3}, 422, r"seed: Input should be greater than or equal to 0"),
    ("txt2img", {"prompt": "x", "stepz": 3}, 422, r"stepz: Extra inputs are not permitted"),
    ("img2img", {"prompt": "x"}, 422, r"image: Field required"),
    ("img2img", {"image": base64.b64encode(b"not an image at all").decode()}, 422,
     r"^image is not an image file Pillow can identify; send a PNG or JPEG file$"),
    ("img2img", {"image": "%%% not base64 %%%"}, 422, r"image is not valid base64"),
    ("img2img", {"image": "data:image/png,abc"}, 422, r"without ;base64"),
    ("img2img", {"image": png_b64(picture(16).crop((0, 0, 16, 12)))}, 422, r"16x12.*square"),
    ("img2img", {"image": png_b64(Image.new("RGB", (300, 300)))}, 413, r"300x300; this server takes images up to 256"),
    ("img2img", {"image": png_b64(picture()), "strength": 1.5}, 422, r"strength: Input should be less than"),
    ("inpaint", {"image": png_b64(picture()), "mask": png_b64(box_mask(8))}, 422,
     r"mask is 8x8 but the image is 16x16"),
    ("inpaint", {"image": png_b64(picture()), "mask": png_b64(Image.new("L", (16, 16), 128))}, 422,
     r"mask is not binary"),
    ("inpaint", {"image": png_b64(picture()), "mask": png_b64(Image.new("L", (16, 16), 0))}, 422,
     r"mask is all black"),
    ("upscale", {"image": png_b64(picture(4)), "steps": 1001}, 422,
     r"steps: Input should be less than or equal to 1000"),
]


@pytest.mark.parametrize("task, body, status, match", BAD, ids=[f"{t}-{m[:24]}" for t, _, _, m in BAD])
def test_bad_input_is_a_4xx_with_a_message(client: TestClient, task: str, body: dict, status: int,
                                           match: str) -> None:
    import re

    response = client.post(f"/api/{task}", json=body)
    assert response.status_code == status, response.text[:300]
    assert re.search(match, response.json()["detail"]), response.json()["detail"]


def test_malformed_and_oversized_bodies_are_refused_and_the_server_keeps_serving(client: TestClient) -> None:
    response = client.post("/api/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in response.json()["detail"]
    big = json.dumps({"prompt": "x", "negative_prompt": "y" * (2**20)})
    response = client.post("/api/txt2img", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "over this server's limit" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced on the bytes as they arrive
        for _ in range(20):
            yield b" " * 2**16

    response = client.post("/api/txt2img", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.post("/api/txt2img", json={"prompt": "x", "steps": 2}).status_code == 200


def test_a_full_queue_answers_429(generator: Generator) -> None:
    app = create_app(generator, ServeSettings(concurrency=1, max_waiting=0, limits=TINY_LIMITS))
    with TestClient(app) as client:
        gate = threading.Event()
        blocker = app.state.get_queue().submit(lambda job: gate.wait(10))  # the only worker is busy
        try:
            response = client.post("/api/txt2img", json={"prompt": "x", "steps": 2})
            assert response.status_code == 429 and "try again" in response.json()["detail"]
            assert response.headers["retry-after"]
        finally:
            gate.set()
        assert blocker.wait(5)
        assert client.post("/api/txt2img", json={"prompt": "x", "steps": 2}).status_code == 200


# ---- over real sockets: disconnects and load ---------------------------------------------------
@pytest.fixture(scope="module")
def server(generator: Generator):
    generator_ = tiny_generator(upscale=False)
    settings = ServeSettings(concurrency=1, max_waiting=8, limits=replace(TINY_LIMITS, max_steps=1000))
    with BackgroundServer(create_app(generator_, settings)) as server:
        yield server


def get_json(server: BackgroundServer, path: str) -> dict:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def post(server: BackgroundServer, path: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_job(server: BackgroundServer, stream: bool) -> None:
    before = get_json(server, "/api/health")["queue"]
    body = {"prompt": "x", "steps": 1000, "num_images": 4, "seed": 0}  # many seconds of work
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("POST", f"/api/txt2img?stream={int(stream)}", json.dumps(body),
                       {"Content-Type": "application/json"})
    if stream:
        response = connection.getresponse()
        while json.loads(response.readline())["event"] != "progress":
            pass
    else:
        wait_for(lambda: get_json(server, "/api/health")["queue"]["running"] == 1)
    connection.sock.close()  # the client goes away mid-generation
    connection.close()
    wait_for(lambda: get_json(server, "/api/health")["queue"]["cancelled"] == before["cancelled"] + 1, 5.0)
    queue = get_json(server, "/api/health")["queue"]
    assert queue["running"] == 0 and queue["completed"] == before["completed"]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_load_20_concurrent_requests_complete_or_are_refused_cleanly(server: BackgroundServer) -> None:
    body = {"prompt": "grinning face", "steps": 8, "num_images": 2}
    assert post(server, "/api/txt2img", body)[0] == 200  # warm-up, so the baseline holds the model's buffers
    baseline, peak = rss_mb(), [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    results: list[tuple[int, dict]] = [None] * 20  # type: ignore[list-item]

    def one(i: int) -> None:
        results[i] = post(server, "/api/txt2img", {**body, "seed": i})

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    sampler.join()
    elapsed = time.monotonic() - start
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    ok = [data for status, data in results if status == 200]
    assert len(ok) >= 9  # 1 running + 8 waiting fit at once; more when jobs finish during the burst
    for status, data in results:
        if status == 200:
            assert len(data["images"]) == 2 and decode(data["images"][0]).size == (16, 16)
        else:
            assert "try again" in data["detail"]
    growth = peak[0] - baseline
    print(f"\nload: {statuses.count(200)} ok, {statuses.count(429)} refused in {elapsed:.2f} s; "
          f"RSS {baseline:.0f} MB -> peak {peak[0]:.0f} MB (+{growth:.0f} MB)")
    assert growth < 200, f"RSS grew by {growth:.0f} MB under load"
    health = get_json(server, "/api/health")
    assert health["status"] == "ok" and health["queue"]["running"] == 0 and health["queue"]["waiting"] == 0
    assert post(server, "/api/txt2img", body)[0] == 200


# ---- the command -------------------------------------------------------------------------------
def test_serve_command_is_registered_and_checks_its_options(capsys) -> None:
    assert "serve" in cli.build_parser().format_help()
    assert cli.main(["serve", "--max-waiting", "-1"]) == 2
    assert "--max-waiting -1 must be in" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "/nonexistent/model"]) == 2
    assert "/nonexistent/model" in capsys.readouterr().err


def test_serve_command_serves_the_model_folder_on_loopback(tmp_path: Path, monkeypatch, capsys) -> None:
    import uvicorn

    from test_text_to_image import tiny_model_folder

    folder = tiny_model_folder(tmp_path / "tiny")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    assert cli.main(["serve", "--model", str(folder), "--port", "8123", "--max-waiting", "3"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 8123
    assert "http://127.0.0.1:8123" in capsys.readouterr().err
    with TestClient(served["app"]) as client:
        info = client.get("/api/info").json()
        assert info["max_waiting"] == 3 and info["tasks"] == ["txt2img", "img2img", "inpaint"]
        assert info["model_hash"]  # loaded from the folder, not in memory
        assert client.post("/api/txt2img", json={"prompt": "x", "steps": 2}).status_code == 200
    assert cli.main(["serve", "--model", str(folder), "--host", "0.0.0.0"]) == 0
    assert "exposes the server" in capsys.readouterr().err
