"""Attention equals the textbook softmax(QK^T/sqrt(d))V; padding and chunking change nothing."""

from __future__ import annotations

import math

import pytest
import torch

from latent_diffusion.attention import Attention


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine, OpenMP threads would only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_attention(attn: Attention, x, context=None, mask=None):
    """Reference: explicit per-head softmax(Q K^T / sqrt(d)) V in float64, masked keys dropped."""
    source = x if context is None else context
    wq, wk, wv = (m.weight.double() for m in (attn.to_q, attn.to_k, attn.to_v))
    q, k, v = x.double() @ wq.T, source.double() @ wk.T, source.double() @ wv.T
    b, n, _ = q.shape
    h, d = attn.heads, attn.head_dim
    q = q.view(b, n, h, d).transpose(1, 2)
    k = k.view(b, -1, h, d).transpose(1, 2)
    v = v.view(b, -1, h, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * d)
    linear = attn.to_out[0]
    return (out @ linear.weight.double().T + linear.bias.double()).float()


@pytest.fixture
def cross() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=16, context_dim=12, heads=4, head_dim=8).eval()


def test_self_attention_matches_naive_reference() -> None:
    torch.manual_seed(1)
    attn = Attention(query_dim=16, heads=2, head_dim=8).eval()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_naive_reference_with_and_without_mask(cross) -> None:
    x, ctx = torch.randn(3, 7, 16), torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(cross(x, ctx), naive_attention(cross, x, ctx), atol=1e-5, rtol=1e-5)
    expected = naive_attention(cross, x, ctx, mask)
    torch.testing.assert_close(cross(x, ctx, mask), expected, atol=1e-5, rtol=1e-5)
    # The mask matters: without it the masked rows differ.
    assert not torch.allclose(cross(x, ctx), expected, atol=1e-3)


def test_chunked_equals_unchunked(cross) -> None:
    x, ctx = torch.randn(2, 13, 16), torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    full = cross(x, ctx, mask)
    # 13 tokens in chunks of 4 leaves a ragged last chunk.
    torch.testing.assert_close(cross(x, ctx, mask, chunk_size=4), full, atol=1e-6, rtol=1e-6)
    cross.chunk_size = 1
    torch.testing.assert_close(cross(x, ctx, mask), full, atol=1e-6, rtol=1e-6)


def test_padded_tokens_have_no_effect(cross) -> None:
    x, ctx = torch.randn(2, 9, 16), torch.randn(2, 4, 12)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    out = cross(x, ctx, mask)
    garbage = torch.where(mask[..., None], ctx, 1e4 * torch.randn_like(ctx))
    assert torch.equal(cross(x, garbage, mask), out)
    # Appending more padding changes the shapes, not the result.
    longer = torch.cat([ctx, torch.randn(2, 3, 12)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(cross(x, longer, longer_mask), out, atol=1e-6, rtol=1e-6)


def test_padded_tokens_receive_no_gradient(cross) -> None:
    x = torch.randn(2, 5, 16)
    ctx = torch.randn(2, 4, 12, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    cross(x, ctx, mask).square().sum().backward()
    assert torch.all(ctx.grad[~mask] == 0)
    assert torch.all(ctx.grad[mask].abs().sum(-1) > 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": torch.randn(2, 4, 10)}, "context_dim=12"),
        ({"context": torch.randn(3, 4, 12)}, "batch size"),
        ({}, "context is required"),
        ({"context": torch.randn(2, 4, 12), "context_mask": torch.ones(2, 5, dtype=torch.bool)},
         "context_mask has shape"),
        ({"context": torch.randn(2, 4, 12), "context_mask": torch.ones(2, 4)}, "torch.bool"),
        ({"context": torch.randn(2, 4, 12),
          "context_mask": torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)},
         r"rows \[1\] have no real token"),
        ({"context": torch.randn(2, 4, 12), "chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_inputs_raise(cross, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        cross(torch.randn(2, 3, 16), **kwargs)


def test_self_attention_rejects_context_and_bad_width() -> None:
    attn = Attention(query_dim=8, heads=2, head_dim=4)
    with pytest.raises(ValueError, match="self-attention"):
        attn(torch.randn(1, 3, 8), torch.randn(1, 2, 8))
    with pytest.raises(ValueError, match=r"x has shape \(1, 3, 7\)"):
        attn(torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="heads"):
        Attention(query_dim=8, heads=0)


def test_parameter_names_follow_the_original() -> None:
    attn = Attention(query_dim=8, context_dim=6, heads=2, head_dim=4)
    assert sorted(attn.state_dict()) == [
        "to_k.weight", "to_out.0.bias", "to_out.0.weight", "to_q.weight", "to_v.weight",
    ]
    assert attn.to_k.weight.shape == (8, 6)
