"""The UNet and the VAE decoder run by OpenVINO, one graph per input shape, as optimum-intel runs them.

Each network is exported once per input signature (names, shapes, dtypes: a trace may bake a
size in, so a graph is never run at another) with ``openvino.convert_model`` (PyTorch frontend,
traced on the call's own inputs) and saved as OpenVINO IR in a cache folder; it is compiled for
the CPU once per signature and precision (``INFERENCE_PRECISION_HINT`` f32 or bf16: OpenVINO would otherwise pick bf16 by itself on a CPU
with AMX, and fp32 output must stay fp32). bf16 graphs are reshaped to the call's static shapes
first, as optimum-intel does (0.0127 s vs 0.0210 s per UNet call of models/emoji-styles, batch 2,
one thread); fp32 graphs keep dynamic shapes, because OpenVINO 2026.4's CPU plugin crashes the
process (a segfault, which no fallback can catch) compiling these UNets static in f32.

The cache folder is named by a digest of the weights themselves (not a folder hash: components
built in memory have none), of the signature and of the OpenVINO version, so a changed model or
runtime never meets a stale graph. It is written under a temporary name and renamed into place,
with a manifest of SHA-256 digests of its files; a folder whose files do not match is deleted and
rebuilt, never compiled. An export or compile that fails leaves nothing behind: the network runs
in PyTorch for that signature, with one warning.

The wrappers are drop-ins where sampling meets the networks: :class:`OpenVINOUNet` is called like
:class:`~latent_diffusion.unet.UNet`, :class:`OpenVINODecoder` answers ``decode_latents`` like the
autoencoder; both keep the PyTorch module (its config, parameters and device) for everything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latent_diffusion.io import atomic_directory, file_digest

CACHE_ENV_VAR = "LDM_OPENVINO_CACHE"
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
INSTALL_HINT = "pip install -e '.[openvino]' (or: pip install openvino)"


class BackendUnavailable(ImportError):
    """The runtime a backend needs is not installed; the message names what to install."""


def require_openvino() -> Any:
    """The ``openvino`` module, or :class:`BackendUnavailable` naming the extra to install."""
    try:
        import openvino
    except ImportError as err:
        raise BackendUnavailable(f"backend 'openvino' needs the OpenVINO runtime, which is not installed: "
                                 f"{INSTALL_HINT}; or use --backend torch") from err
    return openvino


def default_cache_dir() -> Path:
    """``$LDM_OPENVINO_CACHE`` if set, else ``~/.cache/latent-diffusion/openvino``."""
    value = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "latent-diffusion" / "openvino"


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s state: names the weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


class _Positional(nn.Module):
    """``fn(*inputs)`` with the inputs in signature order, named as the wrapped call wants them."""

    def __init__(self, module: nn.Module, call: Callable[..., torch.Tensor], names: tuple[str, ...]) -> None:
        super().__init__()
        self.module, self.call, self.names = module, call, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.call(**dict(zip(self.names, inputs)))


def cpu_supports_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin offers bf16 inference on this CPU (its optimization
    capabilities list ``BF16``: AVX512-BF16 or AMX). Where it does not, compiling with a bf16
    inference precision crashes the process (OpenVINO 2026.4 on an AVX2-only CPU: a segfault,
    which no fallback can catch), so the backend refuses bf16 up front."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class GraphRunner:
    """Exports, caches, compiles and runs one network for each input signature it meets."""

    def __init__(self, name: str, module: nn.Module, call: Callable[..., torch.Tensor],
                 cache_dir: Path | None = None) -> None:
        self.ov = require_openvino()
        self.name, self.module, self.call = name, module, call
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.digest = weights_digest(module)
        self.compiled: dict[tuple, Any] = {}
        self.failed: set[tuple] = set()  # signatures that fell back to PyTorch (warned once each)
        # A compiled model's call reuses one infer request: the server's concurrent jobs take turns.
        self.lock = threading.Lock()
        self.core = self.ov.Core()

    @staticmethod
    def signature(inputs: dict[str, torch.Tensor]) -> tuple:
        """Names, shapes and dtypes of the inputs: one static graph per signature."""
        return tuple((name, tuple(t.shape), str(t.dtype)) for name, t in inputs.items())

    def folder(self, signature: tuple) -> Path:
        """The cache folder of this network's graph for ``signature``."""
        key = json.dumps([CACHE_FORMAT, self.ov.__version__, self.digest, signature])
        return self.cache_dir / f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}"

    def run(self, inputs: dict[str, torch.Tensor], precision: str) -> torch.Tensor | None:
        """The network's output for ``inputs`` (float32 on the CPU), or None when OpenVINO could
        not build this signature (the caller then runs PyTorch)."""
        with self.lock:
            return self._run(inputs, precision)

    def _run(self, inputs: dict[str, torch.Tensor], precision: str) -> torch.Tensor | None:
        signature = self.signature(inputs)
        key = (signature, precision)
        if key in self.failed:
            return None
        compiled = self.compiled.get(key)
        if compiled is None:
            try:
                compiled = self._compile(self._graph(signature, inputs), inputs, precision)
            except Exception as err:  # any failure of the runtime: PyTorch is the answer, not a crash
                self.failed.add(key)
                warnings.warn(f"OpenVINO could not build the {self.name} for inputs "
                              f"{', '.join(f'{n} {list(s)}' for n, s, _ in signature)} "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              "running it in PyTorch", stacklevel=4)
                return None
            self.compiled[key] = compiled
        arrays = [t.detach().to("cpu").contiguous().numpy() for t in inputs.values()]
        result = compiled(arrays)[compiled.output(0)]
        return torch.from_numpy(np.array(result, dtype=np.float32))  # a copy: OpenVINO reuses its buffer

    def _graph(self, signature: tuple, inputs: dict[str, torch.Tensor]) -> Path:
        """The IR file for ``signature``: the cached one if it is whole, else a fresh export."""
        folder = self.folder(signature)
        if folder.is_dir():
            if self._valid(folder, signature):
                return folder / "model.xml"
            shutil.rmtree(folder, ignore_errors=True)  # stale or corrupt: rebuilt, never used
        with atomic_directory(folder) as tmp:
            wrapper = _Positional(self.module, self.call, tuple(inputs)).eval()
            example = tuple(inputs.values())
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: static here
                warnings.simplefilter("ignore", DeprecationWarning)  # convert_model traces with torch.jit
                model = self.ov.convert_model(wrapper, example_input=example)
            self.ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            files = {name: file_digest(tmp / name) for name in ("model.xml", "model.bin")}
            (tmp / MANIFEST).write_text(json.dumps({"format": CACHE_FORMAT, "openvino": self.ov.__version__,
                                                    "weights": self.digest, "signature": signature,
                                                    "files": files}, indent=1))
        return folder / "model.xml"

    def _valid(self, folder: Path, signature: tuple) -> bool:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            same = (manifest["format"] == CACHE_FORMAT and manifest["openvino"] == self.ov.__version__
                    and manifest["weights"] == self.digest
                    and json.loads(json.dumps(signature)) == manifest["signature"])
            return same and all(file_digest(folder / name) == digest for name, digest in manifest["files"].items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _compile(self, xml: Path, inputs: dict[str, torch.Tensor], precision: str) -> Any:
        model = self.core.read_model(str(xml))
        if precision == "bf16":  # static shapes; fp32 stays dynamic (see the module docstring)
            model.reshape({model.inputs[i]: list(t.shape) for i, t in enumerate(inputs.values())})
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        return self.core.compile_model(model, "CPU", config)


class OpenVINOUNet(nn.Module):
    """Called like the UNet it wraps; computed by OpenVINO (PyTorch for a signature it cannot build)."""

    def __init__(self, unet: nn.Module, precision: str = "fp32", cache_dir: Path | None = None) -> None:
        super().__init__()
        self.torch_module = unet
        self.config = unet.config
        self.precision = precision
        self.runner = GraphRunner("unet", unet, self._call, cache_dir)

    @property
    def downsampling_factor(self) -> int:
        """The wrapped UNet's."""
        return self.torch_module.downsampling_factor

    def _call(self, x: torch.Tensor, timesteps: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return self.torch_module(x, timesteps, **cond)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, **cond: torch.Tensor | None) -> torch.Tensor:
        """``unet(x, timesteps, **cond)``; scalar timesteps are broadcast to the batch."""
        timesteps = torch.as_tensor(timesteps, dtype=torch.float32).expand(x.shape[0]).contiguous()
        given = {name: value for name, value in sorted(cond.items()) if value is not None}
        out = self.runner.run({"x": x, "timesteps": timesteps, **given}, self.precision)
        return self.torch_module(x, timesteps, **given) if out is None else out.to(x.dtype)


class OpenVINODecoder(nn.Module):
    """The autoencoder (or a tiny decoder) with ``decode_latents`` computed by OpenVINO; everything
    else is the wrapped module's."""

    def __init__(self, autoencoder: nn.Module, precision: str = "fp32", cache_dir: Path | None = None) -> None:
        super().__init__()
        self.torch_module = autoencoder
        self.config = autoencoder.config
        self.precision = precision
        self.runner = GraphRunner("decoder", autoencoder, self._call, cache_dir)

    @property
    def latent_channels(self) -> int:
        """The wrapped autoencoder's."""
        return self.torch_module.latent_channels

    @property
    def downsampling_factor(self) -> int:
        """The wrapped autoencoder's."""
        return self.torch_module.downsampling_factor

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        return self.torch_module.decode_latents(z)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``autoencoder.decode_latents(z)``."""
        out = self.runner.run({"z": z}, self.precision)
        return self.torch_module.decode_latents(z) if out is None else out

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped autoencoder's (PyTorch)."""
        return self.torch_module.encode_latents(x)


__all__ = ["BackendUnavailable", "GraphRunner", "OpenVINODecoder", "OpenVINOUNet", "cpu_supports_bf16",
           "default_cache_dir", "require_openvino", "weights_digest"]
