"""Bad input found by trying to break things (issue #20): devices, undecodable text and images,
the per-call memory budget, the autoencoder attention that used to store a [T, T] matrix; and
inference precision (issue #18)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latent_diffusion.autoencoder.blocks import AttnBlock
from latent_diffusion.conditioning.text import check_prompts
from latent_diffusion.data.imagefolder import ImageFolderDataset
from latent_diffusion.hardware import resolve_device
from latent_diffusion.pipelines import TextToImage
from latent_diffusion.pipelines import budget
from latent_diffusion.pipelines.images import read_image
from test_text_to_image import tiny_components


def test_devices_are_checked_before_loading():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'; choose cpu, cuda, cuda:N, mps or auto"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            resolve_device("cuda:1")


def test_undecodable_prompt_bytes_are_named():
    with pytest.raises(ValueError, match=r"prompts\[1\] is not valid UTF-8 text .* character 2"):
        check_prompts(["fine", "ab\udcffc"])


def test_a_caption_file_that_is_not_utf8_names_the_file(tmp_path: Path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"red \xff heart")
    with pytest.raises(ValueError, match=r"a\.txt' is not UTF-8 text \(byte 0xff at offset 4\); save it as UTF-8"):
        ImageFolderDataset(tmp_path, split="all")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    Image.new("1", (300, 300)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # 300 x 300 is over twice this
    with pytest.raises(ValueError, match="bomb.png' is too large to decode safely"):
        read_image(tmp_path / "bomb.png", 3)


def test_autoencoder_attention_matches_the_softmax_formula():
    torch.manual_seed(0)
    block = AttnBlock(32, 8).eval()
    x = torch.randn(2, 32, 6, 5)
    with torch.no_grad():
        normed = block.norm(x)
        q, k, v = (t.flatten(2) for t in (block.q(normed), block.k(normed), block.v(normed)))  # [B, C, T]
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)       # [B, T, T]
        expected = x + block.proj_out((v @ weights.transpose(1, 2)).view_as(x))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_memory_estimate_grows_and_bounds_the_largest_side(monkeypatch: pytest.MonkeyPatch):
    components = tiny_components()
    sizes = [16, 32, 64, 128]
    totals = [budget.estimate_memory(components, s, 1).total for s in sizes]
    assert totals == sorted(totals) and totals[-1] > totals[0]
    one = budget.estimate_memory(components, 64, 1)
    four = budget.estimate_memory(components, 64, 4)
    assert four.unet == 4 * one.unet and four.decoder == 4 * one.decoder and four.weights == one.weights
    tiled = budget.estimate_memory(components, 1024, 1, vae_tile=8)
    assert tiled.decoder < budget.estimate_memory(components, 1024, 1).decoder and tiled.unet > 0
    limit = budget.estimate_memory(components, 96, 2).total
    monkeypatch.setenv(budget.BUDGET_ENV, str(limit / 2**30))
    assert budget.memory_budget() == int(limit / 2**30 * 2**30)
    most = budget.largest_side(components, 16, 2, budget.memory_budget())
    assert most == 96 or (most < 96 and budget.estimate_memory(components, most + 16, 2).total > budget.memory_budget())
    budget.check_memory(components, most, 2, 16)
    with pytest.raises(ValueError, match=rf"at most {most} px a side on this model for 2 images"):
        budget.check_memory(components, most + 16, 2, 16)


def test_pipeline_refuses_before_any_work(monkeypatch: pytest.MonkeyPatch):
    pipe = TextToImage.from_pretrained(tiny_components())
    monkeypatch.setenv(budget.BUDGET_ENV, "0.0001")
    calls = []
    monkeypatch.setattr(pipe, "_run", lambda *a, **k: calls.append(1))  # planning refuses, nothing runs
    with pytest.raises(ValueError, match="over this machine's 0.0 GiB budget"):
        pipe("a cat", steps=2)
    assert calls == []
    monkeypatch.setenv(budget.BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match="LDM_MEMORY_BUDGET_GB='lots' is not a number of GiB"):
        pipe("a cat", steps=2)


def test_precision_auto_follows_the_device_and_bf16_stays_close(monkeypatch: pytest.MonkeyPatch):
    from latent_diffusion import hardware

    components = tiny_components()
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: None)
    assert TextToImage.from_pretrained(components, precision="auto").precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: "amx")
    fast = TextToImage.from_pretrained(components, precision="auto")
    assert fast.precision == "bf16"
    exact = TextToImage.from_pretrained(components)
    assert exact.precision == "fp32"  # the Python API's default: what diffusers' fp32 would give
    args = dict(prompt="a red heart", num_images=2, steps=3, seed=4, progress=False)
    a, b, again = exact(**args), fast(**args), fast(**args)
    pa, pb = (np.stack([np.asarray(i, np.int16) for i in r]) for r in (a, b))
    assert np.array_equal(pb, np.stack([np.asarray(i, np.int16) for i in again]))  # deterministic
    assert np.abs(pa - pb).mean() < 8  # bf16 drifts by a few grey levels, not a different picture
    assert b.metadata[0].precision == "bf16" and a.metadata[0].precision == "fp32"
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        exact.set_precision("fp16")


class Stop(Exception):
    """What a server's cancellation raises inside a job."""


def test_interrupt_stops_a_call_inside_decoding_and_back_projection(monkeypatch: pytest.MonkeyPatch):
    from latent_diffusion.autoencoder import tiling
    from latent_diffusion.conditioning import image as image_conditions

    pipe = TextToImage.from_pretrained(tiny_components())
    pipe.enable_vae_tiling(2)  # 32 px = 8x8 latents: 9 overlapping tiles of 2
    calls: list[str] = []
    tiles = []
    original = tiling.tiled_apply

    def counting(fn, x, tile, overlap, scale, interrupt=None):
        return original(lambda part: tiles.append(1) or fn(part), x, tile, overlap, scale, interrupt)

    monkeypatch.setattr(tiling, "tiled_apply", counting)

    def interrupt() -> None:
        calls.append("x")
        if len(calls) == 3 + 1 + 2:  # 3 steps, the check before decoding, then 2 tiles
            raise Stop("cancelled by the client")

    with pytest.raises(Stop):
        pipe("a cat", steps=3, size=32, interrupt=interrupt, progress=False)
    assert len(tiles) == 1  # stopped at the second tile, not after the whole decode
    rounds: list[int] = []

    def second_round() -> None:
        rounds.append(1)
        if len(rounds) == 2:
            raise Stop("the job ran too long")

    with pytest.raises(Stop):
        image_conditions.back_project(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 2, 2), iterations=5,
                                      interrupt=second_round)
    assert len(rounds) == 2


def test_sigterm_stops_ldm_serve_within_seconds_while_a_job_runs(tmp_path: Path) -> None:
    """#20: SIGTERM while a long job runs: the queue cancels it at its next step and the process exits
    within the graceful-shutdown window (5 s) plus a margin, not after the job."""
    import http.client
    import json
    import signal
    import subprocess
    import sys
    import threading
    import time

    from ddp_worker import free_port
    from test_text_to_image import tiny_components

    from latent_diffusion.pipelines import save_components

    folder = save_components(tiny_components(), tmp_path / "model")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "latent_diffusion", "serve", "--model", str(folder), "--port",
                               str(port), "--max-steps", "1000", "--max-run-seconds", "3600"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it answers
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/api/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "ldm serve did not start"
            time.sleep(0.2)

        answers: list[int] = []

        def long_job() -> None:  # 1000 steps x 8 images
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                connection.request("POST", "/api/txt2img", json.dumps({"prompt": "red heart", "steps": 1000,
                                                                       "num_images": 8, "seed": 1}),
                                   {"Content-Type": "application/json"})
                answers.append(connection.getresponse().status)
            except OSError:
                answers.append(0)  # the connection closed: no result

        job = threading.Thread(target=long_job, daemon=True)
        job.start()
        running = time.monotonic() + 30
        while True:  # until the job is running
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/health")
            if json.loads(connection.getresponse().read())["queue"]["running"] == 1:
                break
            assert time.monotonic() < running, "the job never started"
            time.sleep(0.1)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert time.monotonic() - started < 10, "ldm serve took too long to stop"
        job.join(timeout=10)
        assert answers and answers[0] != 200, answers  # the job was stopped, not waited for
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
