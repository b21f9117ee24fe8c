"""Multi-head self- and cross-attention over ``torch.nn.functional.scaled_dot_product_attention``.

This is the attention of the LDM paper's conditioning mechanism (Sec. 3.3): queries come from the
flattened UNet feature map, keys and values from a context sequence tau_theta(y) (text tokens,
class embeddings, ...) or, for self-attention, from the feature map itself. The parameter names
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``) are those of the original ``CrossAttention`` so that
Stable Diffusion checkpoints load unchanged.

Padding: a text encoder pads every prompt to a fixed length. ``context_mask`` (``True`` = real
token) turns padded keys into ``-inf`` logits, so their softmax weight is exactly zero and their
values cannot leak into the output, whatever they contain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latent_diffusion.validation import check_positive


class Attention(nn.Module):
    """Multi-head attention: ``softmax(Q K^T / sqrt(head_dim)) V`` with an optional padding mask.

    Args:
        query_dim: width C of the queries ``x`` (and the output).
        context_dim: width of the context tokens; ``None`` makes this self-attention.
        heads: number of attention heads.
        head_dim: width of each head; the inner width is ``heads * head_dim``.
        dropout: dropout after the output projection (as in LDM; no dropout on the weights).
        chunk_size: if set, queries are processed ``chunk_size`` at a time, which bounds the
            memory of the ``[heads, N, L]`` weight matrix for large images; results are the same.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        heads: int = 8,
        head_dim: int = 64,
        dropout: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        check_positive("query_dim", query_dim)
        check_positive("heads", heads)
        check_positive("head_dim", head_dim)
        if context_dim is not None:
            check_positive("context_dim", context_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} must lie in [0, 1)")
        self.query_dim = query_dim
        self.context_dim = context_dim
        self.heads = heads
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        _check_chunk_size(chunk_size)
        inner = heads * head_dim
        kv_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(kv_dim, inner, bias=False)
        self.to_v = nn.Linear(kv_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` [B, N, C] to ``context`` [B, L, Cc] (or to ``x`` itself).

        ``context_mask`` [B, L] bool marks real tokens (``True``) and padding (``False``); every
        row needs at least one real token. ``chunk_size`` overrides the attribute for this call.
        """
        self._check_inputs(x, context, context_mask)
        source = x if context is None else context
        q = self._split_heads(self.to_q(x))
        k = self._split_heads(self.to_k(source))
        v = self._split_heads(self.to_v(source))
        # [B, L] -> [B, 1, 1, L]: one key mask shared by all heads and all queries.
        mask = None if context_mask is None else context_mask[:, None, None, :]
        chunk = self.chunk_size if chunk_size is None else chunk_size
        _check_chunk_size(chunk)
        if chunk is None or chunk >= q.shape[2]:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            # Each query row is independent, so splitting along N changes memory, not results.
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(q_part, k, v, attn_mask=mask)
                    for q_part in q.split(chunk, dim=2)
                ],
                dim=2,
            )
        return self.to_out(self._merge_heads(out))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)

    def _check_inputs(
        self, x: torch.Tensor, context: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> None:
        if x.ndim != 3 or x.shape[-1] != self.query_dim:
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected [batch, tokens, {self.query_dim}]"
            )
        if context is None:
            if self.context_dim is not None:
                raise ValueError(
                    f"context is required: this attention was built with "
                    f"context_dim={self.context_dim}; pass [batch, tokens, {self.context_dim}]"
                )
            if context_mask is not None:
                raise ValueError("context_mask was given without a context; pass both or neither")
            return
        if self.context_dim is None:
            raise ValueError(
                "context was given but this is a self-attention layer (context_dim=None); "
                "build it with context_dim set to the context width to cross-attend"
            )
        if context.ndim != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(
                f"context has shape {tuple(context.shape)}; expected "
                f"[batch, tokens, {self.context_dim}] (context_dim={self.context_dim})"
            )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"context has batch size {context.shape[0]} but x has {x.shape[0]}; they must match"
            )
        if context_mask is not None:
            check_context_mask(context_mask, context.shape[0], context.shape[1])


def check_context_mask(context_mask: torch.Tensor, batch: int, length: int) -> None:
    """Raise unless ``context_mask`` is a bool [batch, length] tensor with a real token per row.

    A row without any real token would make the softmax 0/0 (NaN), so it is rejected here rather
    than silently producing NaNs deep inside the network.
    """
    if context_mask.dtype != torch.bool:
        raise ValueError(
            f"context_mask has dtype {context_mask.dtype}; expected torch.bool (True = real token)"
        )
    if tuple(context_mask.shape) != (batch, length):
        raise ValueError(
            f"context_mask has shape {tuple(context_mask.shape)}; expected [{batch}, {length}] "
            "= [batch, context tokens]"
        )
    # The empty-row test reads the mask's values: under torch.compile that splits the graph (a host
    # sync, then every block compiled on its own until the recompile limit sends the rest back to
    # eager), so compiled code skips it; the shape and dtype checks above still run there.
    if torch.compiler.is_compiling():
        return
    if not bool(context_mask.any(dim=1).all()):
        empty = (~context_mask.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"context_mask rows {empty} have no real token (all False); every sample needs at "
            "least one token to attend to"
        )


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be None or a positive integer")


__all__ = ["Attention", "check_context_mask"]
