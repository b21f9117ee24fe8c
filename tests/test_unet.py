"""The UNet: conditioning paths, checkpointing, padding, timestep embedding, validation, SD keys."""

from __future__ import annotations

import math

import pytest
import torch

from latent_diffusion.unet import ResBlock, UNet, UNetConfig, timestep_embedding

TINY = dict(
    in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
    attention_levels=(1,), num_heads=2, context_dim=12, norm_groups=8,
)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: on a shared 2-core machine, OpenMP threads would only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_unet(seed: int = 0, **overrides) -> UNet:
    """A tiny UNet with all weights random: zero-initialized outputs would hide every effect."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def inputs(batch: int = 2, size: int = 8, tokens: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    t = torch.tensor([3.0, 700.25][:batch])
    ctx = torch.randn(batch, tokens, 12, generator=g)
    return x, t, ctx


def test_output_shape_dtype_and_fresh_model_starts_at_zero() -> None:
    x, t, ctx = inputs()
    fresh = UNet(UNetConfig(**TINY))
    # The output conv is zero-initialized, as in the original.
    assert torch.equal(fresh(x, t, ctx), torch.zeros(2, 4, 8, 8))
    out = make_unet(out_channels=3)(x, t, ctx)
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32


def test_each_condition_changes_the_output() -> None:
    model = make_unet(num_classes=5, concat_channels=2)
    x, t, ctx = inputs()
    labels, concat = torch.tensor([0, 4]), torch.randn(2, 2, 8, 8)
    base = model(x, t, ctx, class_labels=labels, concat=concat)
    variants = {
        "context": model(x, t, ctx + 1.0, class_labels=labels, concat=concat),
        "label": model(x, t, ctx, class_labels=torch.tensor([1, 5]), concat=concat),
        "concat": model(x, t, ctx, class_labels=labels, concat=concat + 1.0),
        "timestep": model(x, t + 0.5, ctx, class_labels=labels, concat=concat),
    }
    for name, out in variants.items():
        assert (out - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3, name
    # Samples are independent: changing sample 1's context leaves sample 0 unchanged.
    ctx2 = ctx.clone()
    ctx2[1] += 1.0
    torch.testing.assert_close(model(x, t, ctx2, class_labels=labels, concat=concat)[0], base[0])


def test_scalar_timestep_broadcasts() -> None:
    model = make_unet()
    x, _, ctx = inputs()
    expected = model(x, torch.tensor([250.0, 250.0]), ctx)
    torch.testing.assert_close(model(x, torch.tensor(250), ctx), expected)
    torch.testing.assert_close(model(x, 250.0, ctx), expected)


@pytest.mark.parametrize("linear", [False, True])
def test_gradient_checkpointing_matches_plain_backward(linear, monkeypatch) -> None:
    plain = make_unet(dropout=0.1, use_linear_projection=linear).train()
    ckpt = make_unet(dropout=0.1, use_linear_projection=linear, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.train()
    x, t, ctx = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    calls = []
    original = ResBlock._forward
    monkeypatch.setattr(
        ResBlock, "_forward", lambda self, *a: calls.append(1) or original(self, *a)
    )
    results = []
    for model in (plain, ckpt):
        calls.clear()
        torch.manual_seed(7)  # same dropout masks in both runs
        out = model(x, t, ctx, context_mask=mask)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()], len(calls)))
    (out_a, grads_a, calls_a), (out_b, grads_b, calls_b) = results
    # Checkpointing really happened: every ResBlock ran again during backward.
    assert calls_b == 2 * calls_a
    torch.testing.assert_close(out_b, out_a, atol=1e-6, rtol=1e-6)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-5)


def test_padded_context_tokens_have_no_effect() -> None:
    model = make_unet()
    x, t, ctx = inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    out = model(x, t, ctx, context_mask=mask)
    garbage = torch.where(mask[..., None], ctx, 100.0 * torch.randn_like(ctx))
    assert torch.equal(model(x, t, garbage, context_mask=mask), out)
    longer = torch.cat([ctx, torch.randn(2, 4, 12)], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    padded = model(x, t, longer, context_mask=longer_mask)
    torch.testing.assert_close(padded, out, atol=1e-5, rtol=1e-5)
    # Dropping the padded tokens entirely is the same as masking them (sample 0 keeps 2 tokens).
    torch.testing.assert_close(model(x[:1], t[:1], ctx[:1, :2]), out[:1], atol=1e-5, rtol=1e-5)


def test_attention_chunking_gives_the_same_output() -> None:
    model = make_unet(attention_levels=(0, 1))
    x, t, ctx = inputs(size=16)
    full = model(x, t, ctx)
    model.set_attention_chunk_size(7)
    torch.testing.assert_close(model(x, t, ctx), full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dim", [16, 7])
def test_timestep_embedding_matches_closed_form(dim) -> None:
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    emb = timestep_embedding(t, dim)
    half = dim // 2
    for b, step in enumerate(t.tolist()):
        for i in range(half):
            freq = 10000.0 ** (-i / half)
            assert emb[b, i].item() == pytest.approx(math.cos(step * freq), abs=2e-4)
            assert emb[b, half + i].item() == pytest.approx(math.sin(step * freq), abs=2e-4)
    if dim % 2:
        assert torch.all(emb[:, -1] == 0)


def test_bf16_autocast_runs_close_to_fp32() -> None:
    model = make_unet(num_classes=3)
    x, t, ctx = inputs()
    labels = torch.tensor([0, 3])
    ref = model(x, t, ctx, class_labels=labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t, ctx, class_labels=labels)
    assert low.dtype == torch.float32
    assert ((low - ref).norm() / ref.norm()).item() < 0.05


def test_matches_diffusers_after_original_key_conversion() -> None:
    """Independent reference: diffusers converts our state dict as an SD checkpoint."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    for linear, scale_shift, head_dim in [(False, True, None), (True, False, 8)]:
        model = make_unet(num_classes=3, concat_channels=1, use_linear_projection=linear,
                          use_scale_shift_norm=scale_shift, head_dim=head_dim)
        heads = [2, 2] if head_dim is None else [16 // head_dim, 32 // head_dim]
        ref = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=5, out_channels=4, layers_per_block=1, norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
            cross_attention_dim=12, attention_head_dim=heads, use_linear_projection=linear,
            num_class_embeds=4, resnet_time_scale_shift="scale_shift" if scale_shift else "default",
        ).eval()
        state = {f"model.diffusion_model.{k}": v for k, v in model.state_dict().items()}
        converted = convert_ldm_unet_checkpoint(state, dict(ref.config))
        ref.load_state_dict(converted, strict=True)
        x, t, ctx = inputs()
        concat, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 3])
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        with torch.no_grad():
            ours = model(x, t, ctx, mask, labels, concat)
            theirs = ref(torch.cat([x, concat], 1), t, ctx, class_labels=labels,
                         encoder_attention_mask=mask).sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_sd15_parameter_count_and_original_key_names() -> None:
    sd15 = UNetConfig(use_scale_shift_norm=False)  # defaults are SD 1.x otherwise
    with torch.device("meta"):
        model = UNet(sd15)
    assert sum(p.numel() for p in model.parameters()) == 859_520_964
    state = model.state_dict()
    assert len(state) == 686  # keys under model.diffusion_model. in an SD 1.5 checkpoint
    expected_shapes = {
        "time_embed.0.weight": (1280, 320),
        "time_embed.2.weight": (1280, 1280),
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight": (5120, 640),
        "input_blocks.4.1.transformer_blocks.0.ff.net.2.weight": (640, 2560),
        "input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "middle_block.1.transformer_blocks.0.norm3.weight": (1280,),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
        "output_blocks.11.0.in_layers.0.weight": (640,),
        "out.0.weight": (320,),
        "out.2.weight": (4, 320, 3, 3),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("label_emb") for k in state)


def test_sd2_layout_parameter_count() -> None:
    sd2 = UNetConfig(use_scale_shift_norm=False, head_dim=64, context_dim=1024,
                     use_linear_projection=True)
    with torch.device("meta"):
        model = UNet(sd2)
    assert sum(p.numel() for p in model.parameters()) == 865_910_724
    attn = model.input_blocks[1][1].transformer_blocks[0].attn1
    assert (attn.heads, attn.head_dim) == (5, 64)
    assert tuple(model.state_dict()["input_blocks.1.1.proj_in.weight"].shape) == (320, 320)


def test_unconditional_and_no_mid_attention_layouts() -> None:
    model = make_unet(context_dim=None, mid_attention=False)
    state = model.state_dict()
    assert not any("attn2" in k or "norm2" in k for k in state)
    assert not any(k.startswith("middle_block.1.") for k in state)
    assert any(k.startswith("middle_block.2.") for k in state)
    x, t, _ = inputs()
    assert model(x, t).shape == x.shape
    assert model.downsampling_factor == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": torch.randn(2, 3, 8, 8)}, "x has 3 channels"),
        ({"x": torch.randn(2, 4, 7, 8)}, "x height=7 is not divisible by 2"),
        ({"x": torch.randn(2, 4, 8, 8, 1)}, "x must be a float tensor"),
        ({"context": torch.randn(2, 5, 10)}, "context_dim=12"),
        ({"context": None}, "context is required"),
        ({"timesteps": torch.tensor([1.0, 2.0, 3.0])}, "timesteps has shape"),
        ({"concat": None}, "concat is required"),
        ({"concat": torch.randn(2, 3, 8, 8)}, "concat has 3 channels"),
        ({"concat": torch.randn(2, 2, 4, 4)}, "batch, height and width must match"),
        ({"class_labels": torch.tensor([0, 6])}, r"class_labels contains 6; allowed are 0\.\.4"),
        ({"class_labels": torch.tensor([-1, 0])}, "class_labels contains -1"),
        ({"class_labels": None}, "class_labels is required"),
        ({"class_labels": torch.tensor([0.0, 1.0])}, "class_labels has dtype"),
        ({"context_mask": torch.ones(2, 4, dtype=torch.bool)}, "context_mask has shape"),
    ],
)
def test_bad_forward_inputs_raise(change, message) -> None:
    model = UNet(UNetConfig(**{**TINY, "num_classes": 5, "concat_channels": 2}))
    x, t, ctx = inputs()
    args = {"x": x, "timesteps": t, "context": ctx, "class_labels": torch.tensor([0, 1]),
            "concat": torch.randn(2, 2, 8, 8), **change}
    with pytest.raises(ValueError, match=message):
        model(**args)


def test_unexpected_conditions_raise() -> None:
    model = UNet(UNetConfig(**{**TINY, "context_dim": None}))
    x, t, ctx = inputs()
    for kwargs, message in [({"context": ctx}, "context_dim=None"),
                            ({"class_labels": torch.tensor([0, 1])}, "num_classes=None"),
                            ({"concat": torch.randn(2, 1, 8, 8)}, "concat_channels=0")]:
        with pytest.raises(ValueError, match=message):
            model(x, t, **kwargs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"norm_groups": 5}, "norm_groups=5"),
        ({"attention_levels": (2,)}, "attention_levels"),
        ({"attention_levels": (1, 1)}, "attention_levels"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"head_dim": 5}, "head_dim=5"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"model_channels": 0}, "model_channels=0"),
        ({"dropout": 1.0}, "dropout"),
        ({"concat_channels": -1}, "concat_channels=-1"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"attention_levels": (), "mid_attention": False}, "context_dim=12 is set"),
    ],
)
def test_bad_config_raises(change, message) -> None:
    with pytest.raises(ValueError, match=message):
        UNetConfig(**{**TINY, **change})


def test_config_round_trips(tmp_path) -> None:
    config = UNetConfig(**{**TINY, "num_classes": 10, "head_dim": 8})
    path = tmp_path / "unet.yaml"
    config.save(path)
    assert UNetConfig.load(path) == config
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig.from_dict({**config.to_dict(), "norm_groups": 3})
