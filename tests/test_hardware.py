"""Device and precision resolution: ``auto`` follows the detected bf16 units, never a guess."""

import pytest
import torch

from latent_diffusion import hardware
from latent_diffusion.training.loop import autocast, memory_format
from latent_diffusion.training.settings import RunConfig


@pytest.mark.parametrize("units, expected", [("amx", "bf16"), ("avx512_bf16", "bf16"), (None, "fp32")])
def test_auto_precision_follows_the_cpu_units(monkeypatch, units, expected):
    monkeypatch.setattr(hardware, "cpu_bf16_units", lambda: units)
    assert hardware.resolve_precision("auto", "cpu") == expected
    # An explicit choice is never overridden by detection.
    assert hardware.resolve_precision("fp32", "cpu") == "fp32"
    assert hardware.resolve_precision("bf16", "cpu") == "bf16"


def test_detection_matches_torch_probe():
    amx = torch.cpu._is_amx_tile_supported()
    avx = torch.cpu._is_avx512_bf16_supported()
    assert (hardware.cpu_bf16_units() is not None) == (amx or avx)
    assert "bf16 units" in hardware.describe_cpu()


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        hardware.resolve_precision("fp8", "cpu")


def test_run_config_accepts_auto_and_channels_last():
    run = RunConfig.from_dict({"precision": "auto", "channels_last": True})
    assert memory_format(run) == torch.channels_last
    assert memory_format(RunConfig()) == torch.contiguous_format
    with torch.no_grad(), autocast("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_resolve_device_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.resolve_device("auto") == "cpu"
    assert hardware.resolve_device("cpu") == "cpu"
