"""Class-label conditioning (LDM's ``ClassEmbedder``) with a null class for classifier-free guidance.

Labels are indices ``0 .. num_classes - 1`` or, when ``class_names`` are given, names. The null
("unconditional") class is index ``num_classes``, named ``""`` (the empty prompt's counterpart).

Two routes into the UNet:

- ``mode="context"``: an embedding table gives a one-token cross-attention context [B, 1, D], as
  in the paper's class-conditional ImageNet LDM.
- ``mode="embedding"``: the labels themselves go to the UNet (``class_labels=`` [B]), which adds
  its own class embedding to the timestep embedding. Build that UNet with the same
  ``num_classes``: its label embedding has ``num_classes + 1`` rows, the last for the null class.
"""

from __future__ import annotations

from collections import Counter
from numbers import Integral
from typing import Literal

import torch
from torch import nn

from ..validation import check_choice, check_positive

NULL_CLASS_NAME = ""

Labels = torch.Tensor | list[int] | list[str]


class ClassLabelEncoder(nn.Module):
    """Maps class indices or names to UNet conditioning: a [B, 1, D] context or ``class_labels``."""

    def __init__(
        self,
        num_classes: int,
        embed_dim: int = 512,
        class_names: tuple[str, ...] = (),
        mode: Literal["context", "embedding"] = "context",
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_choice("mode", mode, ("context", "embedding"))
        check_class_names(class_names, num_classes)
        self.num_classes, self.mode, self.class_names = num_classes, mode, tuple(class_names)
        self.index = {name: i for i, name in enumerate(class_names)} | {NULL_CLASS_NAME: num_classes}
        if mode == "context":
            check_positive("embed_dim", embed_dim)
            self.embedding: nn.Embedding | None = nn.Embedding(num_classes + 1, embed_dim)
        else:
            self.embedding = None  # the UNet owns the class embedding on this route
        # Gives label tensors built from Python lists the module's device, even without weights.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)

    @property
    def null_index(self) -> int:
        """Index of the null (unconditional) class: ``num_classes``."""
        return self.num_classes

    @property
    def num_embeddings(self) -> int:
        """Rows a class embedding needs: the classes plus the null class."""
        return self.num_classes + 1

    @property
    def context_dim(self) -> int | None:
        """Width D of the context in ``"context"`` mode, None in ``"embedding"`` mode."""
        return None if self.embedding is None else self.embedding.embedding_dim

    def resolve(self, labels: Labels) -> torch.Tensor:
        """Validated class indices [B] (long, on the module's device) from indices or names."""
        device = self._device_anchor.device
        if isinstance(labels, torch.Tensor):
            if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool \
                    or labels.dtype.is_complex:
                raise ValueError(
                    f"labels must be a 1-D integer tensor [B]; got shape {tuple(labels.shape)} "
                    f"and dtype {labels.dtype}"
                )
            indices = labels.long()
        else:
            indices = torch.tensor(self._indices_from_list(labels), dtype=torch.long)
        if indices.numel() == 0:
            raise ValueError("labels must hold at least one label, got an empty batch")
        bad = (indices < 0) | (indices > self.num_classes)
        if bool(bad.any()):
            value = int(indices[bad][0])
            raise ValueError(
                f"label {value} is out of range; allowed are 0..{self.num_classes - 1} and "
                f"{self.null_index} for the null class"
            )
        return indices.to(device)

    def _indices_from_list(self, labels: object) -> list[int]:
        if not isinstance(labels, (list, tuple)):
            raise ValueError(
                f"labels must be a LongTensor [B] or a list of int or of str, got "
                f"{type(labels).__name__}: {labels!r}"
            )
        if all(isinstance(x, str) for x in labels):
            return [self._index_of_name(name) for name in labels]
        if all(isinstance(x, Integral) and not isinstance(x, bool) for x in labels):
            return [int(x) for x in labels]
        kinds = sorted({type(x).__name__ for x in labels})
        raise ValueError(
            f"labels must be all int (indices) or all str (class names), got a mix of "
            f"{kinds}: {labels!r}"
        )

    def _index_of_name(self, name: str) -> int:
        if name in self.index:
            return self.index[name]
        if not self.class_names:
            raise ValueError(
                f"label {name!r} is a name but no class_names were configured; pass indices "
                f"0..{self.num_classes - 1} or set class_names"
            )
        shown = list(self.class_names[:20]) + (["..."] if len(self.class_names) > 20 else [])
        raise ValueError(
            f"unknown class name {name!r}; allowed names are {shown} and {NULL_CLASS_NAME!r} "
            "for the null class"
        )

    def null_labels(self, batch_size: int) -> torch.Tensor:
        """A batch [batch_size] of the null class index."""
        check_positive("batch_size", batch_size)
        return torch.full((batch_size,), self.null_index, dtype=torch.long,
                          device=self._device_anchor.device)

    def forward(self, labels: Labels) -> dict[str, torch.Tensor]:
        """UNet kwargs: ``context`` [B, 1, D] + ``context_mask`` [B, 1], or ``class_labels`` [B]."""
        indices = self.resolve(labels)
        if self.embedding is None:
            return {"class_labels": indices}
        context = self.embedding(indices.to(self.embedding.weight.device))[:, None, :]
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        return {"context": context, "context_mask": mask}


def check_class_names(class_names: tuple[str, ...], num_classes: int) -> None:
    """Raise unless ``class_names`` is empty or holds ``num_classes`` distinct non-empty names."""
    if not class_names:
        return
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but num_classes={num_classes}; give one "
            "name per class or none"
        )
    for i, name in enumerate(class_names):
        if not isinstance(name, str) or name == NULL_CLASS_NAME:
            raise ValueError(
                f"class_names[{i}]={name!r} must be a non-empty str ('' names the null class)"
            )
    duplicates = sorted(n for n, count in Counter(class_names).items() if count > 1)
    if duplicates:
        raise ValueError(f"class_names must be distinct; repeated: {duplicates}")


__all__ = ["ClassLabelEncoder", "NULL_CLASS_NAME", "check_class_names"]
