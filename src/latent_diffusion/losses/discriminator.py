"""PatchGAN discriminator (pix2pix's NLayerDiscriminator, as used by LDM) and its losses.

The discriminator classifies overlapping patches, not whole images: each output logit sees a
``receptive_field()`` x ``receptive_field()`` window (70 px with the default 3 layers), so the
adversarial loss pushes the decoder towards locally realistic texture - the detail an L1 and
a perceptual loss alone blur away.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.validation import check_channels, check_choice, check_positive

__all__ = [
    "PatchDiscriminator",
    "hinge_d_loss",
    "vanilla_d_loss",
    "generator_adversarial_loss",
]

_KERNEL, _PADDING = 4, 1


class PatchDiscriminator(nn.Module):
    """pix2pix NLayerDiscriminator: a map of real/fake logits, one per image patch.

    ``num_layers`` stride-2 4x4 convs (the first without normalization) widen the channels
    x2 each up to 8 x ``base_channels``, then one stride-1 4x4 conv with normalization and a
    final stride-1 4x4 conv to 1 channel; LeakyReLU(0.2) between. Conv weights ~ N(0, 0.02),
    norm scales ~ N(1, 0.02), as in pix2pix and taming-transformers.

    ``norm="batch"`` is the reference. ``"group"`` (GroupNorm) makes each sample's logits
    independent of the rest of the batch: LDM calls the discriminator on real and fake batches
    separately, so batch norm normalizes them with different statistics, and tiny CPU batches
    make those statistics noisy.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        norm: Literal["batch", "group"] = "batch",
    ) -> None:
        super().__init__()
        check_positive("in_channels", in_channels)
        check_positive("base_channels", base_channels)
        check_positive("num_layers", num_layers)
        check_choice("norm", norm, ["batch", "group"])
        self.in_channels = in_channels
        self.num_layers = num_layers
        use_bias = norm != "batch"  # a bias before batch norm is cancelled by its mean
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, _KERNEL, stride=2, padding=_PADDING),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1  # the last widening conv keeps the resolution
            layers += [
                nn.Conv2d(width, out, _KERNEL, stride=stride, padding=_PADDING, bias=use_bias),
                _norm_layer(norm, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, _KERNEL, stride=1, padding=_PADDING))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def receptive_field(self) -> int:
        """Side in pixels of the input window that one output logit depends on."""
        field = 1
        for stride in reversed(_strides(self.num_layers)):
            field = (field - 1) * stride + _KERNEL
        return field

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the logit map for an input of ``height`` x ``width``."""
        return _output_side(height, self.num_layers), _output_side(width, self.num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch logits [B, 1, h, w] for images ``x`` [B, in_channels, H, W]."""
        if x.ndim != 4:
            raise ValueError(
                f"discriminator input has shape {tuple(x.shape)}; "
                "expected [batch, channels, height, width]"
            )
        check_channels("discriminator input", x.shape[1], self.in_channels)
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        if h < 1 or w < 1:
            raise ValueError(
                f"discriminator input size {tuple(x.shape[-2:])} is too small for "
                f"num_layers={self.num_layers}; use images of at least "
                f"{_min_input_size(self.num_layers)} px or fewer layers"
            )
        return self.main(x)


def _strides(num_layers: int) -> list[int]:
    """Strides of the convs in order: ``num_layers`` down-sampling ones, then two stride-1."""
    return [2] * num_layers + [1, 1]


def _output_side(side: int, num_layers: int) -> int:
    for stride in _strides(num_layers):
        side = (side + 2 * _PADDING - _KERNEL) // stride + 1
    return side


def _min_input_size(num_layers: int) -> int:
    side = 1
    while _output_side(side, num_layers) < 1:
        side += 1
    return side


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    # Up to 32 groups (the usual GroupNorm setting), as many as divide the channels.
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _init_weights(module: nn.Module) -> None:
    """pix2pix init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN discriminator loss.

    0.5 * (mean(softplus(-real)) + mean(softplus(fake))), i.e. binary cross-entropy on logits.
    """
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def generator_adversarial_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss, -mean(logits_fake), used by LDM with either D loss."""
    return -logits_fake.mean()
