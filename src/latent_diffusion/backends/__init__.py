"""Where the networks run: PyTorch (``torch``, the default) or OpenVINO (``openvino``, the optional
extra ``pip install -e '.[openvino]'``), chosen per pipeline (``--backend``).

A backend replaces only the two networks sampling calls in a loop, the UNet and the VAE decoder
(:mod:`latent_diffusion.backends.openvino`); text encoding, the samplers' arithmetic and
everything else stay PyTorch, so the same seed draws the same noise on every backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from latent_diffusion.model.components import DiffusionComponents
from latent_diffusion.validation import check_choice

BACKENDS = ("torch", "openvino")


class BackendError(ValueError):
    """A backend that cannot run this model as loaded (device, dtype); the message says what to do."""


class Backend:
    """The components a call samples with on ``name``: the model's own for ``torch``; for
    ``openvino``, the UNet and the decoder wrapped (built once, recompiled per precision)."""

    def __init__(self, name: str, components: DiffusionComponents, cache_dir: Path | None = None) -> None:
        check_choice("backend", name, BACKENDS)
        self.name = name
        self.components = components
        self.cache_dir = cache_dir
        self.unet = self.decoder = None
        if name == "openvino":
            from latent_diffusion.backends.openvino import OpenVINODecoder, OpenVINOUNet, require_openvino

            require_openvino()
            param = next(components.unet.parameters())
            if param.device.type != "cpu" or param.dtype != torch.float32:
                raise BackendError(f"backend 'openvino' runs float32 weights on the CPU; this model is "
                                 f"{str(param.dtype).removeprefix('torch.')} on {param.device}: load it with "
                                 "device='cpu' and dtype=torch.float32 (ldm: --device cpu), or use backend 'torch'")
            self.unet = OpenVINOUNet(components.unet, cache_dir=cache_dir)
            self.decoder = OpenVINODecoder(components.decoder, cache_dir=cache_dir)

    def check_precision(self, precision: str) -> None:
        """Refuse, before any work, a precision this backend cannot run here: OpenVINO's bf16 on a
        CPU whose plugin has no bf16 (compiling for it would crash the process)."""
        if self.name != "openvino" or precision != "bf16":
            return
        from latent_diffusion.backends.openvino import cpu_supports_bf16

        core = self.unet.runner.core
        if not cpu_supports_bf16(core):
            offered = ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            raise BackendError(f"backend 'openvino' with precision 'bf16': OpenVINO's CPU plugin has no bf16 on this "
                               f"CPU (it offers {offered}); use --precision fp32 or auto (auto picks fp32 here), or "
                               "--backend torch")

    def follow_decoder(self, components: DiffusionComponents) -> None:
        """Take ``components`` (the same networks, another ``components.decoder``): only the decoder's
        wrapper is rebuilt, the UNet's compiled graph is kept."""
        self.components = components
        if self.decoder is not None:
            from latent_diffusion.backends.openvino import OpenVINODecoder

            self.decoder = OpenVINODecoder(components.decoder, cache_dir=self.cache_dir)

    def for_sampling(self, precision: str) -> DiffusionComponents:
        """The components whose UNet the reverse process calls."""
        if self.unet is None:
            return self.components
        self.unet.precision = precision
        return dataclasses.replace(self.components, unet=self.unet)

    def for_decoding(self, precision: str, tiled: bool) -> DiffusionComponents:
        """The components whose decoder (``components.decoder``: the tiny one if any, else the
        autoencoder) decodes; tiled decoding stays PyTorch (its edge tiles would each need a graph of
        their own shape)."""
        if self.decoder is None or tiled:
            return self.components
        self.decoder.precision = precision
        field = "autoencoder" if self.components.tiny_decoder is None else "tiny_decoder"
        return dataclasses.replace(self.components, **{field: self.decoder})

    @property
    def autocast_precision(self) -> bool:
        """Whether the ``bf16`` precision means PyTorch autocast (OpenVINO takes it as its
        inference precision instead)."""
        return self.name == "torch"


__all__ = ["BACKENDS", "Backend", "BackendError"]
