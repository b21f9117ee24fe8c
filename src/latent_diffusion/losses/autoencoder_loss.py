"""The first-stage (autoencoder) loss of LDM: L1 + perceptual + regularizer + adaptive PatchGAN.

This is LDM's ``LPIPSWithDiscriminator`` (KL models) and ``VQLPIPSWithDiscriminator`` (VQ
models) in one module, with two deliberate differences:

* No learned log-variance. The KL reference divides the pixel loss by ``exp(logvar)`` with a
  learned scalar ``logvar`` (initialized to 0) and adds ``logvar``; we keep ``logvar = 0``,
  the reference's starting point and the VQ reference's behaviour.
* Means, not sums. The KL reference sums its reconstruction NLL over the C*H*W values of each
  image; we average, like the VQ reference. ``kl_weight`` keeps the reference meaning (1e-6 per
  nat of KL against a summed reconstruction loss): the KL term is scaled by ``kl_weight /
  (C*H*W)``, which gives exactly the reference's balance between the two terms at any image
  size. ``codebook_weight`` already pairs with a mean in the VQ reference and is used as is.
  The adversarial term needs no change: the adaptive weight is a ratio of gradient norms, so
  it rescales itself with the reconstruction loss.

Training with this loss alternates two steps (as LDM's ``optimizer_idx`` 0 and 1): the
autoencoder minimizes :meth:`AutoencoderLoss.generator_loss`, the discriminator minimizes
:meth:`AutoencoderLoss.discriminator_loss`. The generator pass also leaves gradients on the
discriminator's parameters; zero them before the discriminator's backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from latent_diffusion.config import Config
from latent_diffusion.losses.discriminator import (
    PatchDiscriminator,
    generator_adversarial_loss,
    hinge_d_loss,
    vanilla_d_loss,
)
from latent_diffusion.losses.perceptual import PerceptualLoss
from latent_diffusion.validation import check_choice, check_positive

__all__ = ["AutoencoderLossConfig", "AutoencoderLoss"]

# LDM's epsilon in the adaptive weight's denominator.
_GRAD_NORM_EPS = 1e-4


@dataclass
class AutoencoderLossConfig(Config):
    """Weights and parts of the autoencoder loss (defaults: LDM's KL-f8 setting).

    regularizer: "kl" (KL-regularized autoencoder) or "vq" (vector-quantized).
    perceptual_weight: weight of the perceptual distance (0 skips building the backbone).
    perceptual_backbone / perceptual_resize: see :class:`PerceptualLoss`.
    kl_weight: per nat of summed KL against a summed reconstruction loss (reference meaning;
        applied as kl_weight / (C*H*W) to our per-value mean, see the module docstring).
    codebook_weight: weight of the VQ codebook + commitment loss.
    disc_weight: multiplies the adaptive adversarial weight (LDM's ``disc_weight``).
    disc_start: first global step with an adversarial term and discriminator training.
    disc_factor: extra factor on the adversarial terms once active.
    disc_loss: "hinge" or "vanilla" (non-saturating) discriminator loss.
    disc_*: PatchGAN input channels, width, depth and normalization.
    adaptive_weight_max: clamp of the gradient-norm ratio (LDM: 1e4).
    """

    regularizer: Literal["kl", "vq"] = "kl"
    perceptual_weight: float = 1.0
    perceptual_backbone: str = "efficientnet-lite0"
    perceptual_resize: int | None = None
    kl_weight: float = 1e-6
    codebook_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start: int = 50001
    disc_factor: float = 1.0
    disc_loss: Literal["hinge", "vanilla"] = "hinge"
    disc_in_channels: int = 3
    disc_base_channels: int = 64
    disc_num_layers: int = 3
    disc_norm: Literal["batch", "group"] = "batch"
    adaptive_weight_max: float = 1e4

    def __post_init__(self) -> None:
        check_choice("regularizer", self.regularizer, ["kl", "vq"])
        check_choice("disc_loss", self.disc_loss, ["hinge", "vanilla"])
        check_choice("disc_norm", self.disc_norm, ["batch", "group"])
        for name in ("perceptual_weight", "kl_weight", "codebook_weight", "disc_weight",
                     "disc_factor", "disc_start"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("disc_in_channels", "disc_base_channels", "disc_num_layers",
                     "adaptive_weight_max"):
            check_positive(name, getattr(self, name))


class AutoencoderLoss(nn.Module):
    """L1 + perceptual + weighted regularizer, and after ``disc_start`` LDM's adaptive GAN term.

    Args:
        config: the loss settings.
        perceptual: an already built :class:`PerceptualLoss` to share (e.g. with evaluation);
            by default one is built from ``config`` when ``perceptual_weight > 0``.

    Only the discriminator is trainable; the perceptual backbone is frozen and left out of
    ``state_dict()``, so a saved loss holds just the discriminator.
    """

    def __init__(
        self,
        config: AutoencoderLossConfig | None = None,
        perceptual: PerceptualLoss | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config if config is not None else AutoencoderLossConfig()
        self.discriminator = PatchDiscriminator(
            in_channels=config.disc_in_channels,
            base_channels=config.disc_base_channels,
            num_layers=config.disc_num_layers,
            norm=config.disc_norm,
        )
        if perceptual is None and config.perceptual_weight > 0:
            perceptual = PerceptualLoss(config.perceptual_backbone, resize=config.perceptual_resize)
        self.perceptual = perceptual
        self._d_loss = hinge_d_loss if config.disc_loss == "hinge" else vanilla_d_loss

    def discriminator_active(self, global_step: int) -> bool:
        """Whether the adversarial terms are on at ``global_step`` (LDM's ``adopt_weight``)."""
        return global_step >= self.config.disc_start

    def regularization_weight(self, inputs: torch.Tensor) -> float:
        """Weight of the regularization loss for images shaped like ``inputs``.

        KL: ``kl_weight / (C*H*W)`` turns the reference's balance against a summed pixel loss
        into the same balance against our mean. VQ: ``codebook_weight`` as is.
        """
        if self.config.regularizer == "kl":
            return self.config.kl_weight / inputs[0].numel()
        return self.config.codebook_weight

    def adaptive_weight(
        self, rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
    ) -> torch.Tensor:
        """disc_weight * clamp(||d rec/d last|| / (||d g/d last|| + 1e-4), 0, max), detached.

        Balances the adversarial gradient against the reconstruction gradient at the decoder's
        last layer, as LDM's ``calculate_adaptive_weight``; both graphs are kept for the
        backward pass that follows.
        """
        rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        norm = torch.linalg.vector_norm
        ratio = norm(rec_grad) / (norm(g_grad) + _GRAD_NORM_EPS)
        ratio = torch.clamp(ratio, 0.0, self.config.adaptive_weight_max).detach()
        return ratio * self.config.disc_weight

    def generator_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        regularization_loss: torch.Tensor,
        last_layer: torch.Tensor | None,
        global_step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss and a dict of float logs.

        Args:
            inputs, reconstructions: images [B, C, H, W] in [-1, 1].
            regularization_loss: a scalar. KL: the KL divergence summed over each sample's
                latent values, averaged over the batch (``posterior.kl().mean()`` in LDM). VQ:
                the quantizer's codebook + commitment loss (a mean).
            last_layer: the decoder's last weight (e.g. ``decoder.conv_out.weight``); needed
                once the discriminator is active, for the adaptive weight.
            global_step: the training step, compared with ``disc_start``.
        """
        _check_images(inputs, reconstructions)
        if not isinstance(regularization_loss, torch.Tensor) or regularization_loss.numel() != 1:
            raise ValueError(
                "regularization_loss must be a scalar tensor, got "
                f"{_describe(regularization_loss)}; "
                "reduce it as the docstring says"
            )
        cfg = self.config
        l1 = (inputs - reconstructions).abs().mean()
        perceptual = torch.zeros((), device=inputs.device)
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            perceptual = self.perceptual(inputs, reconstructions).mean()
        rec_loss = l1 + cfg.perceptual_weight * perceptual
        reg_weight = self.regularization_weight(inputs)
        loss = rec_loss + reg_weight * regularization_loss.reshape(())
        g_adv = torch.zeros((), device=inputs.device)
        weight = torch.zeros((), device=inputs.device)
        if self.discriminator_active(global_step):
            g_adv = generator_adversarial_loss(self.discriminator(reconstructions))
            if torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError(
                        "last_layer=None: the adaptive adversarial weight needs the decoder's "
                        "last weight once global_step >= disc_start"
                    )
                weight = self.adaptive_weight(rec_loss, g_adv, last_layer)
            # Without gradients (validation) the weight cannot be computed; LDM logs it as 0.
            loss = loss + weight * cfg.disc_factor * g_adv
        logs = {
            "total": loss, "l1": l1, "perceptual": perceptual, "rec": rec_loss,
            "reg": regularization_loss, "reg_weight": reg_weight, "g_adv": g_adv,
            "adaptive_weight": weight,
            "disc_factor": cfg.disc_factor if self.discriminator_active(global_step) else 0.0,
        }
        return loss, _floats(logs)

    def discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's loss on real ``inputs`` and (detached) ``reconstructions``.

        Before ``disc_start`` it is computed but multiplied by 0, as in LDM, so a backward
        pass still works; a trainer may skip the step (see :meth:`discriminator_active`).
        """
        _check_images(inputs, reconstructions)
        factor = self.config.disc_factor if self.discriminator_active(global_step) else 0.0
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        d_loss = factor * self._d_loss(logits_real, logits_fake)
        logs = {
            "d_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean(),
            "disc_factor": factor,
        }
        return d_loss, _floats(logs)


def _check_images(inputs: torch.Tensor, reconstructions: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
        raise ValueError(
            f"inputs has shape {_describe(inputs)}; expected [batch, channels, height, width]"
        )
    if not isinstance(reconstructions, torch.Tensor) or reconstructions.shape != inputs.shape:
        raise ValueError(
            f"reconstructions has shape {_describe(reconstructions)} but inputs has "
            f"{tuple(inputs.shape)}; they must match"
        )


def _describe(value: object) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _floats(logs: dict[str, torch.Tensor | float]) -> dict[str, float]:
    return {
        k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in logs.items()
    }
