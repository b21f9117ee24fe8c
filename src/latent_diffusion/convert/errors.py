"""The one error type of conversion, and the strict shape check that names offending keys.

Every problem a user can cause (an unknown layout, missing keys, wrong shapes, a pickle that
would run code) becomes a :class:`ConversionError`: a ``ValueError`` whose one-line message names
the file, the first offending keys and what to do, which the ``ldm`` command line prints as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

MAX_LISTED = 5


class ConversionError(ValueError):
    """A checkpoint or model folder that cannot be converted; the message says why and how to fix it."""


def first(keys: list[str], limit: int = MAX_LISTED) -> str:
    """``keys[:limit]`` as a short string, with ``...`` when more were left out."""
    return f"{keys[:limit]}{' ...' if len(keys) > limit else ''}"


def check_state(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state: Mapping[str, torch.Tensor],
    source: str,
    source_key: Callable[[str], str] = lambda key: key,
    what: str = "weights",
) -> None:
    """Raise unless ``state`` has exactly the keys and shapes of ``expected``.

    ``source_key`` turns one of our key names back into the name it has in the source file, so
    the message names keys the user can find in that file.
    """
    missing = [source_key(k) for k in expected if k not in state]
    unexpected = [source_key(k) for k in state if k not in expected]
    wrong = [
        f"{source_key(k)}: file {tuple(state[k].shape)} vs expected {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {first(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes {first(wrong)}")
    if parts:
        raise ConversionError(f"{source!r}: the {what} do not fit the architecture read from it: "
                              + "; ".join(parts) + " (the file is truncated, or not this kind of model)")


def shapes_of(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Key -> shape of a module's state dict (build it on the meta device to get this for free)."""
    return {key: value.shape for key, value in module.state_dict().items()}


__all__ = ["ConversionError", "check_state", "first", "shapes_of"]
