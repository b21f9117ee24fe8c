"""The UNet's pooled text embedding (``pooled_context``): what it pools, that it starts as a no-op, and
that a model trained without it can be continued with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from latent_diffusion.convert.errors import ConversionError
from latent_diffusion.convert.unet_keys import unet_config_to_diffusers
from latent_diffusion.io import save_module
from latent_diffusion.training.init_weights import init_unet_from
from latent_diffusion.unet import UNet, UNetConfig, pool_context

TINY = UNetConfig(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                  attention_levels=(1,), num_heads=2, context_dim=12, norm_groups=8)


def _trained_looking(unet: UNet) -> UNet:
    """Noise on every weight: a fresh UNet's zero-initialized output and residual convs would make
    its output zero whatever the embedding, so "the same output" would check nothing."""
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    return unet


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 8, 8, generator=g)
    context = torch.randn(3, 6, 12, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 2 + [False] * 4, [True] * 4 + [False] * 2])
    return x, torch.tensor([10.0, 400.0, 999.0]), context, mask


def test_pool_context_is_the_normalized_mean_of_the_real_tokens() -> None:
    _, _, context, mask = _inputs()
    pooled = pool_context(context, mask)
    for row in range(3):
        real = context[row, mask[row]]
        expected = real.sum(dim=0) / len(real)
        torch.testing.assert_close(pooled[row], expected / expected.norm())
    torch.testing.assert_close(pool_context(context), F.normalize(context.mean(dim=1), dim=-1))
    assert not pool_context(context[:1], torch.zeros(1, 6, dtype=torch.bool)).any()  # no real token: zeros


def test_pool_context_of_minilm_states_is_its_sentence_embedding() -> None:
    """Each prompt encoded alone (no padding at all) and mean-pooled, as sentence-transformers pools
    all-MiniLM-L6-v2, equals the pooled padded batch; paraphrases land closer than other concepts."""
    from latent_diffusion.conditioning.text import MiniLMTextEncoder

    encoder = MiniLMTextEncoder(max_length=16)
    prompts = ["red apple", "an apple that is red", "rocket ship"]
    batch = encoder(prompts)
    pooled = pool_context(batch.states, batch.mask)
    for row, prompt in enumerate(prompts):
        ids, _ = encoder.tokenize([prompt])
        used = int(batch.mask[row].sum())
        with torch.no_grad():
            alone = encoder.model(input_ids=ids[:, :used]).last_hidden_state[0]
        torch.testing.assert_close(pooled[row], F.normalize(alone.mean(dim=0), dim=-1), atol=1e-5, rtol=0)
    cosine = pooled @ pooled.T
    assert cosine[0, 1] > cosine[0, 2] + 0.2


def test_the_pooled_path_starts_at_zero_and_ignores_padding() -> None:
    x, t, context, mask = _inputs()
    torch.manual_seed(0)
    plain = _trained_looking(UNet(TINY))
    pooled = UNet(TINY.replace(pooled_context=True))
    assert not pooled.context_pool_proj.weight.any() and not pooled.context_pool_proj.bias.any()
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["context_pool_proj.bias", "context_pool_proj.weight"] and not unexpected
    with torch.no_grad():
        torch.testing.assert_close(pooled(x, t, context, mask), plain(x, t, context, mask), atol=0, rtol=0)
        pooled.context_pool_proj.weight.normal_()
        out = pooled(x, t, context, mask)
        assert (out - plain(x, t, context, mask)).abs().max() > 1e-3  # the prompt now also enters here
        noisy_padding = torch.where(mask[..., None], context, torch.full_like(context, 9.0))
        torch.testing.assert_close(pooled(x, t, noisy_padding, mask), out, atol=1e-6, rtol=0)


def test_init_from_adds_the_pooled_path_to_a_model_trained_without_it(tmp_path: Path) -> None:
    x, t, context, mask = _inputs(1)
    torch.manual_seed(1)
    source = _trained_looking(UNet(TINY))
    save_module(source, TINY, tmp_path / "plain", "unet")
    continued = UNet(TINY.replace(pooled_context=True))
    with torch.no_grad():
        continued.context_pool_proj.weight.fill_(1.0)  # must come back at zero
    init_unet_from(continued, tmp_path / "plain")
    assert not continued.context_pool_proj.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(continued(x, t, context, mask), source(x, t, context, mask), atol=0, rtol=0)
    save_module(continued, continued.config, tmp_path / "pooled", "unet")
    with pytest.raises(ValueError, match="differs from the configured one"):
        init_unet_from(UNet(TINY), tmp_path / "pooled")  # dropping it would change the function


def test_bad_configs_and_export_are_refused() -> None:
    with pytest.raises(ValueError, match="pooled_context=True pools the text context, but context_dim=None"):
        TINY.replace(context_dim=None, attention_levels=(), mid_attention=False, pooled_context=True)
    with pytest.raises(ValueError, match="pooled_context: expected true or false, got 'yes'"):
        TINY.replace(pooled_context="yes")
    with pytest.raises(ConversionError, match="no equivalent"):
        unet_config_to_diffusers(TINY.replace(pooled_context=True), sample_size=8)
    assert unet_config_to_diffusers(TINY, sample_size=8)["cross_attention_dim"] == 12
