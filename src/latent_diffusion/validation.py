"""Checks that turn bad input into a ``ValueError`` naming the parameter, the value and the fix.

Used at every public boundary (configs, model forward passes, samplers) so nothing is silently
broadcast or clipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {allowed}")


def check_integer(name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise unless ``value`` is an int (not a bool) with ``low <= value`` (and ``<= high`` if given)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} must be an integer {allowed}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` > 0 (or >= 0 with ``allow_zero``)."""
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be {bound}")


def check_in_range(name: str, value: float, low: float, high: float) -> None:
    """Raise unless ``low <= value <= high``."""
    if not (low <= value <= high):
        raise ValueError(f"{name}={value!r} must lie in [{low}, {high}]")


def check_channels(name: str, got: int, expected: int) -> None:
    """Raise when a tensor's channel count differs from what the model was built for."""
    if got != expected:
        raise ValueError(
            f"{name} has {got} channels but the model expects {expected}; "
            f"pass a tensor shaped [batch, {expected}, height, width]"
        )


def check_divisible(name: str, size: int, factor: int) -> None:
    """Raise when a spatial size is not a multiple of the model's down-sampling factor."""
    if size % factor != 0:
        lower = (size // factor) * factor
        raise ValueError(
            f"{name}={size} is not divisible by {factor}; use a multiple of {factor} "
            f"(e.g. {lower or factor} or {lower + factor})"
        )
