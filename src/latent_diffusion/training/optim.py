"""Optimizer, learning-rate warm-up, gradient clipping and gradient accumulation.

Both LDM stages train with AdamW and a linear learning-rate warm-up (the paper's configs warm
up the diffusion model for 10k steps, then hold the rate constant); cosine decay is offered
for short runs. Gradient accumulation reaches the paper's large batches on small devices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from latent_diffusion.validation import check_choice, check_positive

ScheduleKind = Literal["constant", "cosine"]


def build_optimizer(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]], lr: float,
                    weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups) with checked hyperparameters."""
    check_positive("lr", lr)
    check_positive("weight_decay", weight_decay, allow_zero=True)
    check_positive("eps", eps)
    if len(betas) != 2:
        raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}]={beta!r} must lie in [0, 1)")
    params = list(params)
    if not params:
        raise ValueError("params is empty; pass model.parameters() of a model with trainable weights")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def check_lr_scale(lr_scale: Mapping[str, float], what: str = "optim.lr_scale") -> None:
    """Refuse a ``lr_scale`` mapping whose keys are not non-empty strings or whose values are not finite and > 0."""
    if not isinstance(lr_scale, Mapping):
        raise ValueError(f"{what} must map parameter name prefixes to multipliers, got {lr_scale!r}")
    for key, scale in lr_scale.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what}: keys must be parameter name prefixes, got {key!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ValueError(f"{what}[{key!r}]={scale!r} must be a finite number > 0")


def scaled_param_groups(named_params: Iterable[tuple[str, torch.Tensor]], lr_scale: Mapping[str, float],
                        lr: float, what: str = "optim.lr_scale") -> list[dict[str, Any]]:
    """Parameter groups whose learning rate is ``lr`` times a per-module scale, for :func:`build_optimizer`.

    ``lr_scale`` maps a dotted name prefix of ``named_params`` (``"context_pool_proj"``, or
    ``"output_blocks.3"``) to a multiplier, so a layer added to a trained model can learn faster than
    the weights it joins. A prefix matches whole name parts (``"out"`` matches ``out.weight``, not
    ``output_blocks.0``); of several matching prefixes the longest wins. Parameters that match none
    keep ``lr`` and come first, so ``optimizer.param_groups[0]`` holds the base rate whenever
    any parameter keeps it. Each group records its ``lr_scale`` (see :func:`base_lr`); parameters
    that do not require gradients are left out. A prefix that matches no parameter is a
    ``ValueError`` naming the top-level modules, as a typo would otherwise train at ``lr`` silently.
    """
    check_positive("lr", lr)
    check_lr_scale(lr_scale, what)
    keys = sorted(lr_scale, key=lambda k: (-len(k), k))  # longest first, so the most specific wins
    groups: dict[str | None, list[torch.Tensor]] = {None: []}
    seen: set[str] = set()
    names: list[str] = []
    for name, param in named_params:
        names.append(name)
        if not param.requires_grad:
            continue
        key = next((k for k in keys if name == k or name.startswith(k + ".")), None)
        groups.setdefault(key, []).append(param)
        if key is not None:
            seen.add(key)
    unmatched = sorted(set(lr_scale) - seen)
    if unmatched:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"{what}: {unmatched} match(es) no trainable parameter; names start with one of {tops} "
                         "(a key is a dotted prefix of a parameter name, e.g. 'context_pool_proj')")
    order = [None] + sorted(k for k in groups if k is not None)
    return [{"params": groups[k], "lr": lr * (1.0 if k is None else float(lr_scale[k])),
             "lr_scale": 1.0 if k is None else float(lr_scale[k])} for k in order if groups[k]]


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The scheduled base learning rate: the first group's ``lr`` over its ``lr_scale`` (1 if absent)."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))


def lr_factor(step: int, warmup_steps: int, total_steps: int | None = None,
              kind: ScheduleKind = "constant") -> float:
    """Multiplier of the base learning rate for the optimizer step ``step`` (counting from 0).

    Warm-up is linear, ``(step + 1) / warmup_steps``, so the very first step already learns
    (a factor of 0 would waste it) and step ``warmup_steps - 1`` reaches the full rate. After
    warm-up, ``constant`` holds 1; ``cosine`` decays as ``0.5 * (1 + cos(pi * p))`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clamped to [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    assert total_steps is not None  # checked by warmup_schedule
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None,
                    kind: ScheduleKind = "constant") -> LambdaLR:
    """``LambdaLR`` following :func:`lr_factor`; call ``scheduler.step()`` after each optimizer step."""
    check_choice("kind", kind, ("constant", "cosine"))
    check_positive("warmup_steps", warmup_steps, allow_zero=True)
    if kind == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps={total_steps!r} must be an integer > warmup_steps={warmup_steps} "
                "for kind='cosine'"
            )
    return LambdaLR(optimizer, _Factor(warmup_steps, total_steps, kind))


@dataclass(frozen=True)
class _Factor:
    """Picklable stand-in for a lambda, so the scheduler's state_dict holds only plain values."""

    warmup_steps: int
    total_steps: int | None
    kind: ScheduleKind

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.warmup_steps, self.total_steps, self.kind)


def clip_grad(params: Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global gradient L2 norm to ``max_norm`` (``None``: only measure); returns the norm before.

    With a ``GradScaler``, call ``scaler.unscale_(optimizer)`` first so the norm is in true units.
    A non-finite result means the gradients overflowed; the caller should skip that step.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        norms = torch.stack([p.grad.detach().float().norm() for p in params])
        return float(norms.norm())
    check_positive("max_norm", max_norm)
    return float(nn.utils.clip_grad_norm_(params, max_norm))


@dataclass
class MicroBatch:
    """One micro-batch of an accumulation group (see :class:`GradientAccumulator`)."""

    should_step: bool
    accum_steps: int

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss / accum_steps``, so the summed gradients equal the full batch's mean gradient."""
        return loss / self.accum_steps

    def backward(self, loss: torch.Tensor, scaler: Any = None) -> None:
        """Back-propagate the scaled loss (through ``scaler.scale`` when mixed precision is on)."""
        loss = self.scale(loss)
        (scaler.scale(loss) if scaler is not None else loss).backward()


class GradientAccumulator:
    """Sums gradients over ``accum_steps`` micro-batches before each optimizer step.

    ::

        for batch in loader:
            with accumulator.micro_batch(model) as mb:
                mb.backward(loss_fn(model, batch))
            if mb.should_step:
                clip_grad(...); optimizer.step(); optimizer.zero_grad(); scheduler.step()

    Under DDP, micro-batches that do not step run inside ``model.no_sync()``, so gradients are
    averaged across processes once per optimizer step instead of once per micro-batch.
    """

    def __init__(self, accum_steps: int = 1) -> None:
        check_positive("accum_steps", accum_steps)
        self.accum_steps = int(accum_steps)
        self.micro_step = 0  # micro-batches seen since the last optimizer step

    @contextmanager
    def micro_batch(self, model: nn.Module) -> Iterator[MicroBatch]:
        """Context for one micro-batch's forward and backward; counts it on a clean exit."""
        batch = MicroBatch(should_step=self.micro_step + 1 == self.accum_steps, accum_steps=self.accum_steps)
        sync = nullcontext() if batch.should_step or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            yield batch
        self.micro_step = 0 if batch.should_step else self.micro_step + 1
