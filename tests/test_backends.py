"""The OpenVINO backend: the same images as PyTorch within a stated tolerance, a cache that is
reused when whole and rebuilt when not, a PyTorch fallback when export fails, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_diffusion import cli
from latent_diffusion.backends import Backend, BackendError
from latent_diffusion.backends.openvino import BackendUnavailable, cpu_supports_bf16, weights_digest
from latent_diffusion.pipelines import TextToImage, read_generation_metadata
from test_text_to_image import tiny_components, tiny_model_folder

openvino = pytest.importorskip("openvino")

CALL = dict(steps=4, sampler="euler", guidance=3.0, seed=5, progress=False)
# fp32 OpenVINO against PyTorch: the same graph, reordered float sums; measured on the tiny model
# well under 1e-4 in latents and at most 1 grey level in pixels.
FP32_LATENT_ATOL = 1e-4
FP32_MAX_GREY = 1


@pytest.fixture()
def components():
    return tiny_components()


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in result])


class ConvertSpy:
    """Counts ``openvino.convert_model`` calls (exports) and can make them fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.calls, self.fail, self.original = 0, fail, openvino.convert_model
        monkeypatch.setattr(openvino, "convert_model", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise RuntimeError("conversion broke")
        return self.original(*args, **kwargs)


def test_openvino_draws_the_pytorch_image_within_tolerance(components, tmp_path: Path, monkeypatch) -> None:
    spy = ConvertSpy(monkeypatch)
    reference = TextToImage(components)("a red heart", **CALL)
    pipe = TextToImage(components)
    pipe.set_backend("openvino", cache_dir=tmp_path)
    got = pipe("a red heart", **CALL)
    torch.testing.assert_close(got.latents, reference.latents, atol=FP32_LATENT_ATOL, rtol=0)
    assert np.abs(pixels(got) - pixels(reference)).max() <= FP32_MAX_GREY
    assert spy.calls == 2  # the UNet (batch 2 with guidance) and the decoder, once each
    assert got.metadata[0].backend == "openvino" and reference.metadata[0].backend == "torch"
    # Not a copy of the PyTorch call: another prompt gives other latents on OpenVINO too.
    assert (pipe("a blue square", **CALL).latents - got.latents).abs().max() > 1e-3


def test_bf16_is_openvino_inference_precision(components, tmp_path: Path) -> None:
    if not cpu_supports_bf16(openvino.Core()):
        pytest.skip("OpenVINO's CPU plugin has no bf16 on this CPU (the refusal is tested below)")
    reference = TextToImage(components)("a red heart", **CALL).latents
    autocast = TextToImage(components, precision="bf16")("a red heart", **CALL).latents
    pipe = TextToImage(components, precision="bf16")
    pipe.set_backend("openvino", cache_dir=tmp_path)
    got = pipe("a red heart", **CALL)
    assert got.metadata[0].precision == "bf16"
    # bf16 in OpenVINO drifts from fp32 as bf16 autocast in PyTorch does: not at all would mean
    # it ran f32, far more would mean a broken graph.
    drift, autocast_drift = ((x - reference).abs().mean() for x in (got.latents, autocast))
    assert 0 < drift < 3 * autocast_drift, (drift, autocast_drift)


def test_bf16_is_refused_before_any_work_where_openvino_has_no_bf16(components, tmp_path: Path,
                                                                    monkeypatch) -> None:
    # On such a CPU (AVX2 only) compiling a bf16 graph segfaults OpenVINO 2026.4: refuse it instead.
    monkeypatch.setattr("latent_diffusion.backends.openvino.cpu_supports_bf16", lambda core: False)
    spy = ConvertSpy(monkeypatch)
    with pytest.raises(BackendError, match="has no bf16 on this CPU.*--precision fp32"):
        TextToImage(components, precision="bf16").set_backend("openvino", cache_dir=tmp_path)
    pipe = TextToImage(components)
    pipe.set_backend("openvino", cache_dir=tmp_path)
    with pytest.raises(BackendError, match="has no bf16"):
        pipe.set_precision("bf16")
    assert pipe.precision == "fp32" and spy.calls == 0  # the refused setting was not taken
    pipe.set_precision("fp32")  # fp32 still runs there
    assert pipe("a red heart", **CALL).metadata[0].backend == "openvino"


def test_cache_is_reused_when_whole_and_rebuilt_when_corrupt(components, tmp_path: Path, monkeypatch) -> None:
    spy = ConvertSpy(monkeypatch)
    first = TextToImage(components)
    first.set_backend("openvino", cache_dir=tmp_path)
    expected = first("a red heart", **CALL).latents
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and spy.calls == 2 and not any(name.startswith(".") for name in folders)

    again = TextToImage(components)
    again.set_backend("openvino", cache_dir=tmp_path)
    torch.testing.assert_close(again("a red heart", **CALL).latents, expected, atol=0, rtol=0)
    assert spy.calls == 2  # nothing exported: both graphs came from the cache

    unet_folder = next(p for p in tmp_path.iterdir() if p.name.startswith("unet-"))
    weights = unet_folder / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong weights
    weights.write_bytes(bytes(data))
    rebuilt = TextToImage(components)
    rebuilt.set_backend("openvino", cache_dir=tmp_path)
    torch.testing.assert_close(rebuilt("a red heart", **CALL).latents, expected, atol=0, rtol=0)
    assert spy.calls == 3  # the corrupt UNet graph was exported again, not used


def test_changed_weights_never_meet_a_stale_graph(tmp_path: Path) -> None:
    a, b = tiny_components(seed=0), tiny_components(seed=1)
    assert weights_digest(a.unet) != weights_digest(b.unet)
    results = []
    for components in (a, b):
        pipe = TextToImage(components)
        pipe.set_backend("openvino", cache_dir=tmp_path)
        results.append(pipe("a red heart", **CALL).latents)
        torch.testing.assert_close(results[-1], TextToImage(components)("a red heart", **CALL).latents,
                                   atol=FP32_LATENT_ATOL, rtol=0)
    assert len(list(tmp_path.glob("unet-*"))) == 2


def test_failed_export_warns_once_runs_pytorch_and_leaves_nothing(components, tmp_path: Path, monkeypatch) -> None:
    ConvertSpy(monkeypatch, fail=True)
    reference = TextToImage(components)("a red heart", **CALL)
    pipe = TextToImage(components)
    pipe.set_backend("openvino", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="OpenVINO could not build the unet.*running it in PyTorch") as caught:
        got = pipe("a red heart", **CALL)
    assert sum("unet" in str(w.message) for w in caught) == 1  # once, not once per step
    torch.testing.assert_close(got.latents, reference.latents, atol=0, rtol=0)
    assert list(tmp_path.iterdir()) == []  # no half-written graph, no temporary folder


def test_missing_runtime_names_the_extra(components, monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(BackendUnavailable, match=r"pip install -e '\.\[openvino\]'"):
        Backend("openvino", components)
    folder = tiny_model_folder(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["generate", "x", "--model", str(folder), "--backend", "openvino", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[openvino]'" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.png"))


def test_openvino_refuses_weights_it_cannot_run(components) -> None:
    components.unet.to(torch.bfloat16)
    with pytest.raises(BackendError, match="float32 weights on the CPU"):
        Backend("openvino", components)
    with pytest.raises(ValueError, match="backend='onnx'"):
        Backend("onnx", components)


def test_cli_writes_the_backend_into_the_png(tmp_path: Path, monkeypatch) -> None:
    folder = tiny_model_folder(tmp_path / "model")
    monkeypatch.setenv("LDM_OPENVINO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "heart.png"
    assert cli.main(["generate", "a red heart", "--model", str(folder), "--backend", "openvino", "--steps", "3",
                     "--no-progress", "-o", str(out)]) == 0
    assert read_generation_metadata(out).backend == "openvino"
    assert any((tmp_path / "cache").glob("unet-*/manifest.json"))
