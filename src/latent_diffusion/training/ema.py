"""Exponential moving average of model weights (LDM's ``LitEma``), used for sampling.

After every optimizer step, each shadow weight moves toward the live weight:
``shadow <- decay_n * shadow + (1 - decay_n) * param``. With ``warmup`` the decay follows
LDM's ``decay_n = min(decay, (1 + n) / (10 + n))`` for the n-th averaging update, so early
shadows are not dominated by the random initialization. The first ``update_after_step``
updates copy the weights outright (``decay_n = 0``) and do not count toward ``n``.

Shadows are kept in at least float32 even for bf16/fp16 models, because adding
``(1 - 0.9999) * param`` to a bf16 value is lost to rounding. Buffers (e.g. norm statistics)
are not averaged; they are copied on each update so the shadow is a complete state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from latent_diffusion.training.distributed import unwrap_model
from latent_diffusion.validation import check_in_range, check_positive


class EMA:
    """Shadow copy of a model's floating-point parameters, averaged over training steps."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 update_after_step: int = 0) -> None:
        check_in_range("decay", decay, 0.0, 1.0)
        check_positive("update_after_step", update_after_step, allow_zero=True)
        model = unwrap_model(model)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_after_step = int(update_after_step)
        self.num_updates = 0
        self.shadow = {name: _shadow_copy(p) for name, p in model.named_parameters()}
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def decay_at(self, num_updates: int) -> float:
        """Decay used by the ``num_updates``-th call of :meth:`update` (counting from 1)."""
        n = num_updates - self.update_after_step
        if n <= 0:
            return 0.0
        if self.warmup:
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the shadow toward ``model``'s current weights; returns the decay used."""
        params, buffers = self._match(model)
        self.num_updates += 1
        decay = self.decay_at(self.num_updates)
        for name, param in params.items():
            shadow = self.shadow[name]
            # lerp: shadow + (1 - decay) * (param - shadow) == decay * shadow + (1 - decay) * param
            shadow.lerp_(param.detach().to(shadow.device, shadow.dtype), 1.0 - decay)
        for name, buffer in buffers.items():
            self.buffers[name].copy_(buffer.detach())
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters (and buffers) with the averaged ones."""
        params, buffers = self._match(model)
        for name, param in params.items():
            param.copy_(self.shadow[name])
        for name, buffer in buffers.items():
            buffer.copy_(self.buffers[name])

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Put the EMA weights into ``model`` inside the block and restore the live ones after.

        Typical use: ``with ema.swapped(model): samples = sample(model)``. The live weights are
        restored even if the block raises, so training continues from where it was.
        """
        params, buffers = self._match(model)
        backup = {name: t.detach().clone() for name, t in {**params, **buffers}.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, tensor in {**params, **buffers}.items():
                    tensor.copy_(backup[name])

    def to(self, device: str | torch.device) -> "EMA":
        """Move the shadow to ``device`` (e.g. keep it on CPU to save accelerator memory)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers only, so ``torch.load(weights_only=True)`` can read it back."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "update_after_step": self.update_after_step,
            "num_updates": self.num_updates,
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
            "buffers": {k: v.clone() for k, v in self.buffers.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the shadow and the update count.

        ``decay``, ``warmup`` and ``update_after_step`` stay as constructed (they come from the
        run's config, which a resumed run may change); the update count and tensors are restored.
        """
        for section, own in (("shadow", self.shadow), ("buffers", self.buffers)):
            theirs = state.get(section)
            if not isinstance(theirs, dict) or set(theirs) != set(own):
                got = sorted(theirs) if isinstance(theirs, dict) else theirs
                raise ValueError(f"EMA state {section!r} has keys {got}; this model needs {sorted(own)}")
            for name, tensor in theirs.items():
                if tensor.shape != own[name].shape:
                    raise ValueError(
                        f"EMA state {section}.{name} has shape {tuple(tensor.shape)}; "
                        f"the model needs {tuple(own[name].shape)}"
                    )
                own[name].copy_(tensor)
        self.num_updates = int(state["num_updates"])

    def _match(self, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's parameters and buffers by name, checked against the shadow's names."""
        model = unwrap_model(model)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        ours = set(self.shadow) | set(self.buffers)
        theirs = set(params) | set(buffers)
        if set(params) != set(self.shadow) or set(buffers) != set(self.buffers):
            raise ValueError(
                f"model does not match the EMA: tensors missing from the model {sorted(ours - theirs)[:5]}, "
                f"tensors the EMA does not track {sorted(theirs - ours)[:5]}; "
                "pass the model the EMA was built from"
            )
        return params, buffers


def _shadow_copy(param: torch.Tensor) -> torch.Tensor:
    """Detached copy in at least float32 (see the module docstring for why)."""
    dtype = torch.promote_types(param.dtype, torch.float32)
    return param.detach().to(dtype=dtype, copy=True)


__all__ = ["EMA"]
