"""Exact conversions between the three things a diffusion network can predict.

Given a noisy sample ``x_t = sqrt(a) x0 + sqrt(1 - a) eps`` (``a = alpha_bar_t``), a network may
output the noise ``eps`` (DDPM, LDM), the clean data ``x0``, or the velocity
``v = sqrt(a) eps - sqrt(1 - a) x0`` (Salimans & Ho 2022; Stable Diffusion 2 at 768 px). Any one of
them together with ``x_t`` determines the other two; these functions do that algebra, so the rest of
the code can always ask for whichever quantity it needs.

``alpha_bar`` may be a Python float, a 0-d tensor, a ``[batch]`` tensor (one value per sample,
broadcast over the remaining dims) or a tensor with as many dims as ``x_t``.
"""

from __future__ import annotations

import torch

from latent_diffusion.validation import check_choice

PREDICTIONS = ("eps", "x0", "v")


def _coefficients(
    alpha_bar: torch.Tensor | float, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(a), sqrt(1 - a))`` shaped to broadcast against ``like``."""
    # Compute in at least float32: half-precision sqrt(1 - a) near a = 1 would lose most digits.
    a = torch.as_tensor(alpha_bar, device=like.device).to(torch.promote_types(like.dtype, torch.float32))
    if a.ndim == 1 and like.ndim > 1:
        if a.shape[0] != like.shape[0]:
            raise ValueError(
                f"alpha_bar has {a.shape[0]} entries but the batch has {like.shape[0]} samples"
            )
        a = a.view(-1, *([1] * (like.ndim - 1)))
    elif a.ndim not in (0, like.ndim):
        raise ValueError(
            f"alpha_bar of shape {tuple(a.shape)} does not fit a tensor of shape {tuple(like.shape)}; "
            "pass a scalar, one value per sample, or a tensor with the same number of dims"
        )
    return a.sqrt(), (1 - a).sqrt()


def to_x0(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float, kind: str) -> torch.Tensor:
    """The clean-data estimate ``x0`` implied by a ``kind`` ("eps", "x0" or "v") prediction."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "x0":
        return prediction
    sa, s1a = _coefficients(alpha_bar, x_t)
    if kind == "eps":
        return (x_t - s1a * prediction) / sa
    return sa * x_t - s1a * prediction  # v: a x0 + ... = sqrt(a) x_t - sqrt(1-a) v, since a + (1-a) = 1


def to_eps(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float, kind: str) -> torch.Tensor:
    """The noise estimate ``eps`` implied by a ``kind`` ("eps", "x0" or "v") prediction."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "eps":
        return prediction
    sa, s1a = _coefficients(alpha_bar, x_t)
    if kind == "x0":
        return (x_t - sa * prediction) / s1a
    return s1a * x_t + sa * prediction


def to_v(prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float, kind: str) -> torch.Tensor:
    """The velocity ``v = sqrt(a) eps - sqrt(1 - a) x0`` implied by a ``kind`` prediction."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "v":
        return prediction
    sa, s1a = _coefficients(alpha_bar, x_t)
    if kind == "eps":
        # x0 = (x_t - s1a eps) / sa  =>  v = sa eps - s1a (x_t - s1a eps) / sa = (eps - s1a x_t) / sa
        return (prediction - s1a * x_t) / sa
    # eps = (x_t - sa x0) / s1a  =>  v = sa (x_t - sa x0) / s1a - s1a x0 = (sa x_t - x0) / s1a
    return (sa * x_t - prediction) / s1a


def convert(
    prediction: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float, source: str, target: str
) -> torch.Tensor:
    """Convert a ``source`` prediction into a ``target`` one (both "eps", "x0" or "v")."""
    check_choice("target", target, PREDICTIONS)
    fn = {"eps": to_eps, "x0": to_x0, "v": to_v}[target]
    return fn(prediction, x_t, alpha_bar, source)


def target(kind: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The regression target of a ``kind`` network for ``x_t = sqrt(a) x0 + sqrt(1 - a) noise``."""
    check_choice("kind", kind, PREDICTIONS)
    if kind == "eps":
        return noise
    if kind == "x0":
        return x0
    sa, s1a = _coefficients(alpha_bar, x0)
    return sa * noise - s1a * x0


__all__ = ["PREDICTIONS", "convert", "target", "to_eps", "to_v", "to_x0"]
