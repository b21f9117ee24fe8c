"""One conditioner for every condition kind: its encoder, its unconditional input, its dropout.

The conditioner turns prompts or class labels into keyword arguments of the UNet's forward
(``context`` + ``context_mask`` for cross-attention, or ``class_labels``), so a training loop or
a sampler never needs to know which kind of condition it is feeding. It also owns the condition
dropout rate used to train for classifier-free guidance (paper Sec. 4.3; Ho & Salimans 2022):
``drop`` swaps a ``dropout_prob`` fraction of the inputs for the unconditional input (the empty
prompt ``""``, as SD does, or the null class), and ``unconditional`` encodes that input for
sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..config import Config
from ..validation import check_choice, check_in_range, check_positive
from .clip import END_ID, VOCAB_SIZE, CLIPTextEncoder
from .labels import NULL_CLASS_NAME, ClassLabelEncoder, Labels, check_class_names
from .text import (
    MINILM_MAX_POSITIONS,
    MiniLMTextEncoder,
    TextEncoding,
    TransformerTextEncoder,
    check_prompts,
)

KINDS = ("none", "minilm", "transformer", "clip", "class")
TEXT_KINDS = ("minilm", "transformer", "clip")


@dataclass
class ConditionerConfig(Config):
    """What conditions the diffusion model and how (fields prefixed by the kind that uses them).

    ``kind``: "none" (unconditional), "minilm" (frozen pretrained all-MiniLM-L6-v2, D=384),
    "transformer" (BERT-style encoder trained with the UNet), "clip" (SD's frozen CLIP text
    encoder, weights from a checkpoint) or "class" (class labels). ``clip_mask_padding=False``
    hands the UNet an all-True ``context_mask`` because SD's UNets cross-attend to all 77 CLIP
    positions, padding included; set it True to mask the padding.
    """

    kind: Literal["none", "minilm", "transformer", "clip", "class"] = "none"
    max_length: int = 77
    dropout_prob: float = 0.1
    transformer_width: int = 256
    transformer_depth: int = 4
    transformer_heads: int = 4
    clip_hidden: int = 768
    clip_layers: int = 12
    clip_heads: int = 12
    clip_intermediate: int = 3072
    clip_layer: Literal["last", "penultimate"] = "last"
    clip_activation: Literal["quick_gelu", "gelu"] = "quick_gelu"
    clip_pad_token_id: int = END_ID
    clip_normalization: Literal["nfc", "ftfy"] = "nfc"
    clip_mask_padding: bool = False
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    class_embed_dim: int = 512
    class_mode: Literal["context", "embedding"] = "context"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_in_range("dropout_prob", self.dropout_prob, 0.0, 1.0)
        if self.kind in TEXT_KINDS and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be >= 2 (start and end tokens)")
        if self.kind == "minilm" and self.max_length > MINILM_MAX_POSITIONS:
            raise ValueError(
                f"max_length={self.max_length} must be <= {MINILM_MAX_POSITIONS} for kind='minilm'"
            )
        if self.kind == "transformer":
            self._check_heads("transformer_width", self.transformer_width, "transformer_heads",
                              self.transformer_heads)
            check_positive("transformer_depth", self.transformer_depth)
        if self.kind == "clip":
            self._check_clip()
        if self.kind == "class":
            check_positive("num_classes", self.num_classes)
            check_class_names(self.class_names, self.num_classes)
            check_choice("class_mode", self.class_mode, ("context", "embedding"))
            check_positive("class_embed_dim", self.class_embed_dim)

    def _check_clip(self) -> None:
        self._check_heads("clip_hidden", self.clip_hidden, "clip_heads", self.clip_heads)
        check_positive("clip_intermediate", self.clip_intermediate)
        check_choice("clip_layer", self.clip_layer, ("last", "penultimate"))
        check_choice("clip_activation", self.clip_activation, ("quick_gelu", "gelu"))
        check_choice("clip_normalization", self.clip_normalization, ("nfc", "ftfy"))
        minimum = 2 if self.clip_layer == "penultimate" else 1
        if self.clip_layers < minimum:
            raise ValueError(
                f"clip_layers={self.clip_layers} must be >= {minimum} for clip_layer={self.clip_layer!r}"
            )
        if not 0 <= self.clip_pad_token_id < VOCAB_SIZE:
            raise ValueError(
                f"clip_pad_token_id={self.clip_pad_token_id} must lie in [0, {VOCAB_SIZE - 1}] "
                f"({END_ID} for SD 1.x, 0 for SD 2.x)"
            )

    @staticmethod
    def _check_heads(width_name: str, width: int, heads_name: str, heads: int) -> None:
        check_positive(width_name, width)
        check_positive(heads_name, heads)
        if width % heads != 0:
            raise ValueError(f"{width_name}={width} must be divisible by {heads_name}={heads}")


def build_encoder(config: ConditionerConfig) -> nn.Module | None:
    """The encoder module for ``config.kind`` (None for "none")."""
    if config.kind == "minilm":
        return MiniLMTextEncoder(config.max_length)
    if config.kind == "transformer":
        return TransformerTextEncoder(config.transformer_width, config.transformer_depth,
                                      config.transformer_heads, config.max_length)
    if config.kind == "clip":
        return CLIPTextEncoder(
            config.clip_hidden, config.clip_layers, config.clip_heads, config.clip_intermediate,
            config.max_length, config.clip_layer, config.clip_activation, config.clip_pad_token_id,
            config.clip_normalization,
        )
    if config.kind == "class":
        return ClassLabelEncoder(config.num_classes, config.class_embed_dim, config.class_names,
                                 config.class_mode)
    return None


class Conditioner(nn.Module):
    """Prompts or labels in, UNet forward kwargs out; plus the unconditional input and its dropout."""

    def __init__(self, config: ConditionerConfig) -> None:
        super().__init__()
        self.config = config
        self.kind = config.kind
        self.encoder = build_encoder(config)

    @property
    def context_dim(self) -> int | None:
        """Width of the cross-attention context, or None when there is no context."""
        if self.kind in TEXT_KINDS:
            return self.encoder.width
        if self.kind == "class":
            return self.encoder.context_dim
        return None

    @property
    def trainable(self) -> bool:
        """True when the conditioner has weights to train with the UNet."""
        return any(p.requires_grad for p in self.parameters())

    def forward(
        self,
        prompts: list[str] | None = None,
        labels: Labels | None = None,
        batch_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """UNet kwargs for a batch: ``context``/``context_mask``, ``class_labels`` or ``{}``."""
        if batch_size is not None:
            check_positive("batch_size", batch_size)
        if self.kind == "none":
            if prompts is not None or labels is not None:
                raise ValueError("kind='none' is unconditional; pass neither prompts nor labels")
            return {}
        if self.kind == "class":
            self._check_only("labels", labels, "prompts", prompts)
            out = self.encoder(labels)
            self._check_batch(len(next(iter(out.values()))), batch_size)
            return out
        self._check_only("prompts", prompts, "labels", labels)
        prompts = check_prompts(prompts)
        self._check_batch(len(prompts), batch_size)
        return self.to_kwargs(self.encode_text(prompts))

    def encode_text(self, prompts: list[str]) -> TextEncoding:
        """Token-level encoding of prompts (cache it when the encoder is frozen)."""
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"encode_text needs a text conditioner; this one has kind={self.kind!r}")
        return self.encoder(check_prompts(prompts))

    def to_kwargs(self, encoding: TextEncoding) -> dict[str, torch.Tensor]:
        """UNet kwargs from a (possibly cached) text encoding."""
        mask = encoding.mask
        if self.kind == "clip" and not self.config.clip_mask_padding:
            mask = torch.ones_like(mask)  # SD cross-attends to every CLIP position
        return {"context": encoding.states, "context_mask": mask}

    def pair(
        self,
        inputs: list[str] | Labels | None = None,
        negatives: list[str] | Labels | None = None,
        *,
        batch_size: int | None = None,
        concat: torch.Tensor | None = None,
        unconditional: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The conditional and unconditional UNet kwargs of a batch, what classifier-free guidance
        samples with (no gradients).

        ``inputs``: prompts (text kinds), labels or class names (``"class"``; ``""`` is the null
        class), or None / empty prompts for an unconditional model (``"none"``, which refuses
        anything else). ``negatives`` (one per item) replace the unconditional input. ``concat``,
        an image condition (masked image, low-resolution latents), goes to both.
        ``unconditional=False``: no unconditional input is encoded and None returned for it, for a
        sampler that will not ask for one (guidance scale 1; a consistency model, which embeds the
        scale); the prompts' encoding is the same either way.
        """
        with torch.no_grad():
            if self.kind == "none":
                if any(inputs or ()) or any(negatives or ()):
                    raise ValueError('this model is unconditional (conditioner kind \'none\'); use the empty prompt ""')
                cond, uncond = {}, {}
            else:
                key = "labels" if self.kind == "class" else "prompts"
                cond = self(**{key: inputs}, batch_size=batch_size)
                if not unconditional:
                    uncond = None
                elif negatives is None:
                    uncond = self.unconditional(len(inputs))
                else:
                    uncond = self(**{key: negatives})
        if not unconditional:
            uncond = None
        if concat is not None:
            cond = {**cond, "concat": concat}
            uncond = None if uncond is None else {**uncond, "concat": concat}
        return cond, uncond

    def unconditional(self, batch_size: int) -> dict[str, torch.Tensor]:
        """UNet kwargs of the unconditional input: the empty prompt or the null class."""
        check_positive("batch_size", batch_size)
        if self.kind == "none":
            return {}
        if self.kind == "class":
            return self.encoder(self.encoder.null_labels(batch_size))
        return self(prompts=[""] * batch_size)

    def drop(
        self,
        inputs: list[str] | Labels | None,
        generator: torch.Generator | None = None,
    ) -> list[str] | Labels | None:
        """Replace a ``dropout_prob`` fraction of prompts/labels by the unconditional input.

        Each item is dropped independently with probability ``dropout_prob`` (draws come from
        ``generator``, on the CPU, so a seeded generator gives the same choice on any device).
        Returns the same kind of input: prompts -> ``""``, label indices -> ``num_classes``,
        label names -> ``""``. ``dropout_prob == 0`` returns ``inputs`` itself.
        """
        if self.kind == "none":
            if inputs is not None:
                raise ValueError("kind='none' has no condition to drop; pass None")
            return None
        if self.kind in TEXT_KINDS:
            prompts = check_prompts(inputs)
            if self.config.dropout_prob == 0.0:
                return inputs
            dropped = self._draw(len(prompts), generator)
            return ["" if d else p for p, d in zip(prompts, dropped.tolist())]
        indices = self.encoder.resolve(inputs)  # validates before anything is replaced
        if self.config.dropout_prob == 0.0:
            return inputs
        dropped = self._draw(len(indices), generator)
        if isinstance(inputs, torch.Tensor):
            return torch.where(dropped.to(inputs.device), self.encoder.null_index, inputs)
        null = NULL_CLASS_NAME if isinstance(inputs[0], str) else self.encoder.null_index
        return [null if d else x for x, d in zip(inputs, dropped.tolist())]

    def _draw(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        # uniform [0, 1) < p: p = 1 drops everything, p = 0 nothing.
        return torch.rand(batch, generator=generator) < self.config.dropout_prob

    def _check_only(self, wanted: str, value: object, other: str, other_value: object) -> None:
        if other_value is not None:
            raise ValueError(
                f"kind={self.kind!r} is conditioned on {wanted}, not {other}; "
                f"got {other}={other_value!r}"
            )
        if value is None:
            raise ValueError(f"kind={self.kind!r} needs {wanted}; got {wanted}=None")

    @staticmethod
    def _check_batch(got: int, batch_size: int | None) -> None:
        if batch_size is not None and got != batch_size:
            raise ValueError(f"batch_size={batch_size} but {got} prompts/labels were given")


def build_conditioner(config: ConditionerConfig) -> Conditioner:
    """Build the conditioner described by ``config``."""
    return Conditioner(config)


__all__ = ["Conditioner", "ConditionerConfig", "build_conditioner", "build_encoder"]
