"""What the machine can do: the device to run on and whether bf16 is a speed-up there.

bf16 autocast is a lever only where the hardware has bf16 matrix units. On an Intel Xeon with
AMX (or AVX512-BF16) it makes convolution-heavy training steps 2-3x faster; on an AVX2-only CPU a
bf16 matmul ran at 1.3 GFLOP/s against 40.8 in fp32 (shared/docs/resources.md). So ``auto`` is
decided at run time from what oneDNN will use, never assumed from the machine's name.

Measured on this project's 2-core AMX machine (timed forward + backward passes of batch 16/32,
without data loading; ``benchmarks/training_step.py`` is the repeatable version): the
emoji-styles autoencoder step is about 2.9x faster in bf16 (1.36 vs 0.46 s), while a UNet on 8x8
latents is slower in bf16 (0.38 vs 0.29 s: its matmuls are too small to amortise the casts) - so
a config says ``auto`` only where it measured faster, and ``fp32`` elsewhere.

On a 2-core AMD EPYC with AVX512-BF16 and no AMX (``benchmarks/training_step.py``, full training
steps): the emoji-styles autoencoder 0.54x of fp32's step time in bf16, its UNet on 16x16 latents
0.74-0.84x; sampling the default model 0.78x per image (``benchmarks/generate_cost.py``). So
AVX512-BF16 counts as bf16 units too, as measured, not assumed.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16")


DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(name: str) -> str:
    """``auto`` means CUDA when available, else CPU; any other name is checked before a model is
    loaded: a typo, or a device this PyTorch build cannot reach, is a ValueError that says so."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; choose {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this PyTorch has no usable CUDA device "
                             "(torch.cuda.is_available() is False); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r}: Apple's MPS is not available here; use cpu or auto")
    return name


def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix unit (``"amx"`` or ``"avx512_bf16"``), or None when it has neither.

    Asks PyTorch's own CPU feature probe (the one its kernels dispatch on), so the answer matches
    what the kernels will actually use, on any OS.
    """
    probe = getattr(torch, "cpu", None)
    if probe is None:
        return None
    if getattr(probe, "_is_amx_tile_supported", lambda: False)():
        return "amx"
    if getattr(probe, "_is_avx512_bf16_supported", lambda: False)():
        return "avx512_bf16"
    return None


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast is expected to be faster than fp32 on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_units() is not None
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where the device has fast bf16, else ``fp32``; others pass through."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision="bf16"``, else nothing (fp32); resolve ``auto`` first."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision={precision!r}: resolve it first (resolve_precision), to fp32 or bf16")
    return contextlib.nullcontext()


def describe_cpu() -> str:
    """One line for benchmark tables: threads and bf16 units."""
    units = cpu_bf16_units() or "none (fp32 only)"
    return f"CPU threads {torch.get_num_threads()}, bf16 units: {units}, capability {torch.backends.cpu.get_cpu_capability()}"


__all__ = ["DEVICE_CHOICES", "PRECISIONS", "autocast", "cpu_bf16_units", "describe_cpu", "has_fast_bf16", "resolve_device", "resolve_precision"]
