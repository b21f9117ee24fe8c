"""Conditioning encoders and the conditioner: shapes, masks, references, dropout, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import transformers

from latent_diffusion.conditioning import (
    ConditionerConfig,
    TextEncoding,
    build_conditioner,
)
from latent_diffusion.conditioning.clip import END_ID
from latent_diffusion.conditioning.text import bert_tokenizer

TINY_TRANSFORMER = dict(kind="transformer", max_length=12, transformer_width=32,
                        transformer_depth=2, transformer_heads=4)
TINY_CLIP = dict(kind="clip", max_length=16, clip_hidden=32, clip_layers=3, clip_heads=4,
                 clip_intermediate=64)
NAMES = ("cat", "dog", "truck")


@pytest.fixture(scope="module")
def minilm():
    """The pretrained MiniLM conditioner, loaded once for this module (it costs seconds)."""
    return build_conditioner(ConditionerConfig(kind="minilm", max_length=16))


@pytest.fixture()
def transformer():
    torch.manual_seed(0)
    return build_conditioner(ConditionerConfig(**TINY_TRANSFORMER))


def bert_reference(prompts, max_length):
    return bert_tokenizer()(prompts, padding="max_length", max_length=max_length,
                            truncation=True, return_tensors="pt")


def mean_pool(encoding: TextEncoding) -> torch.Tensor:
    weights = encoding.mask.float()[..., None]
    return (encoding.states * weights).sum(1) / weights.sum(1)


# --- MiniLM ------------------------------------------------------------------------------------

def test_minilm_shapes_mask_and_reference(minilm):
    prompts = ["a cat", "a photograph of an astronaut riding a horse"]
    out = minilm(prompts)
    assert set(out) == {"context", "context_mask"} and minilm.context_dim == 384
    assert out["context"].shape == (2, 16, 384) and out["context_mask"].dtype == torch.bool
    reference = bert_reference(prompts, 16)
    assert torch.equal(out["context_mask"], reference["attention_mask"].bool())
    assert out["context_mask"].sum(1).tolist() == [4, 10]  # [CLS] a cat [SEP]; 8 words + 2
    # Real tokens equal the model run on the unpadded prompt: padding changes nothing.
    model = minilm.encoder.model
    for i, prompt in enumerate(prompts):
        alone = bert_tokenizer()([prompt], return_tensors="pt")
        with torch.no_grad():
            expected = model(**alone).last_hidden_state[0]
        n = expected.shape[0]
        torch.testing.assert_close(out["context"][i, :n], expected, atol=1e-5, rtol=1e-4)


def test_minilm_related_prompts_are_closer(minilm):
    pooled = mean_pool(minilm.encode_text(["a cat", "a kitten", "a truck"]))
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0) + 0.2


def test_minilm_is_frozen(minilm):
    minilm.train()  # a training loop's .train() must not enable MiniLM's dropout
    assert not minilm.encoder.model.training and not minilm.trainable
    assert not any(p.requires_grad for p in minilm.parameters())
    out = minilm(["a cat"])
    assert not out["context"].requires_grad and out["context"].grad_fn is None
    again = minilm(["a cat"])  # eval mode: deterministic
    assert torch.equal(out["context"], again["context"])


def test_minilm_truncation_warns_once_and_matches_transformers(minilm):
    long = "a painting of " + "many small houses " * 10
    with pytest.warns(UserWarning, match="max_length=16") as record:
        encoding = minilm.encode_text([long, "a cat", long])
        ids, _ = minilm.encoder.tokenize([long])
    assert len(record) == 2 and "2 prompt(s)" in str(record[0].message)
    reference = bert_reference([long], 16)["input_ids"][0]
    assert torch.equal(ids[0], reference) and ids[0, -1] == bert_tokenizer().sep_token_id
    assert encoding.mask[0].all() and encoding.mask[1].sum() == 4


# --- trainable transformer ---------------------------------------------------------------------

def test_transformer_shapes_and_mask(transformer):
    out = transformer(["a cat", "", "a dog on a red mat"])
    assert out["context"].shape == (3, 12, 32) and transformer.context_dim == 32
    assert torch.equal(out["context_mask"], bert_reference(["a cat", "", "a dog on a red mat"], 12)
                       ["attention_mask"].bool())
    assert transformer.encoder.tokenize([""])[0][0, :2].tolist() == [101, 102]  # [CLS] [SEP]


def test_transformer_padding_does_not_change_real_tokens(transformer):
    encoder = transformer.encoder.eval()
    ids, mask = encoder.tokenize(["a cat sat on the mat"])
    n = int(mask.sum())
    base = encoder.encode_tokens(ids, mask)
    garbage = ids.clone()
    garbage[~mask] = torch.randint(1000, 30000, (int((~mask).sum()),))
    torch.testing.assert_close(encoder.encode_tokens(garbage, mask)[:, :n], base[:, :n])
    # No padding at all: a length-n sequence gives the same real-token states.
    torch.testing.assert_close(encoder.encode_tokens(ids[:, :n], mask[:, :n]), base[:, :n],
                               atol=1e-5, rtol=1e-4)
    encoder.train()  # the training path (no fused fast path) agrees too
    torch.testing.assert_close(encoder.encode_tokens(garbage, mask)[:, :n], base[:, :n],
                               atol=1e-5, rtol=1e-4)


def test_transformer_gets_gradients(transformer):
    assert transformer.trainable
    out = transformer(["a cat", "a dog"])
    (out["context"] * out["context_mask"][..., None]).square().mean().backward()
    for name, param in transformer.named_parameters():
        assert param.grad is not None, name
    assert transformer.encoder.token_embedding.weight.grad[[101, 1037, 4937]].abs().sum() > 0


def test_bf16_autocast_does_not_break(transformer):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = transformer(["a cat"])
    assert torch.isfinite(out["context"].float()).all()


# --- CLIP text encoder -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip():
    """A tiny SD-1-like CLIP conditioner (random weights)."""
    torch.manual_seed(0)
    return build_conditioner(ConditionerConfig(**TINY_CLIP))


def test_clip_last_layer_is_the_model_output_without_attention_mask(clip):
    conditioner = clip
    encoder = conditioner.encoder
    encoding = conditioner.encode_text(["a cat", "a photo of a dog"])
    ids, mask = encoder.tokenizer(["a cat", "a photo of a dog"])
    with torch.no_grad():
        expected = encoder.model(input_ids=ids).last_hidden_state  # SD passes no attention mask
    torch.testing.assert_close(encoding.states, expected)
    assert torch.equal(encoding.mask, mask) and mask.sum(1).tolist() == [4, 7]
    assert (ids[~mask] == END_ID).all()


def test_clip_penultimate_matches_a_model_one_layer_shorter():
    torch.manual_seed(0)
    penultimate = build_conditioner(ConditionerConfig(**TINY_CLIP, clip_layer="penultimate",
                                                      clip_pad_token_id=0))
    model = penultimate.encoder.model
    prompts = ["a cat", "an astronaut riding a horse"]
    states = penultimate.encode_text(prompts).states
    ids, _ = penultimate.encoder.tokenizer(prompts)
    assert (ids[:, -1] == 0).all()  # SD 2 pads with 0
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(states, model.final_layer_norm(hidden))
    # Independent check: diffusers stores SD 2's encoder as the same model minus its last layer.
    shorter = transformers.CLIPTextModel(copy.deepcopy(model.config).__class__(
        **{**model.config.to_dict(), "num_hidden_layers": 2}))
    missing, unexpected = shorter.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".layers.2." in k for k in unexpected)
    with torch.no_grad():
        torch.testing.assert_close(states, shorter(input_ids=ids).last_hidden_state,
                                   atol=1e-5, rtol=1e-4)


def test_clip_is_frozen_and_context_mask_follows_option(clip):
    sd_like = clip
    masked = build_conditioner(ConditionerConfig(**TINY_CLIP, clip_mask_padding=True))
    assert not sd_like.trainable and sd_like.context_dim == 32
    out = sd_like(["a cat"])
    assert out["context_mask"].all() and not out["context"].requires_grad
    assert masked(["a cat"])["context_mask"].sum() == 4


# --- class labels ------------------------------------------------------------------------------

def class_conditioner(**overrides):
    torch.manual_seed(0)
    config = dict(kind="class", num_classes=3, class_names=NAMES, class_embed_dim=8)
    return build_conditioner(ConditionerConfig(**{**config, **overrides}))


def test_class_labels_by_index_and_by_name():
    conditioner = class_conditioner()
    by_index = conditioner(labels=torch.tensor([0, 2]))
    by_name = conditioner(labels=["cat", "truck"])
    by_list = conditioner(labels=[0, 2], batch_size=2)
    table = conditioner.encoder.embedding.weight
    assert by_index["context"].shape == (2, 1, 8) and by_index["context_mask"].all()
    torch.testing.assert_close(by_index["context"][:, 0], table[[0, 2]])
    torch.testing.assert_close(by_name["context"], by_index["context"])
    torch.testing.assert_close(by_list["context"], by_index["context"])
    assert conditioner.trainable and conditioner.context_dim == 8


def test_null_class_is_the_last_row():
    conditioner = class_conditioner()
    null = conditioner.unconditional(4)["context"]
    torch.testing.assert_close(null[:, 0], conditioner.encoder.embedding.weight[[3] * 4])
    torch.testing.assert_close(conditioner(labels=[""])["context"], null[:1])


def test_class_embedding_route_returns_labels_for_the_unet():
    conditioner = class_conditioner(class_mode="embedding")
    assert conditioner.context_dim is None and not conditioner.trainable
    assert conditioner(labels=["dog", "cat"])["class_labels"].tolist() == [1, 0]
    assert conditioner.unconditional(2)["class_labels"].tolist() == [3, 3]
    assert conditioner.encoder.num_embeddings == 4


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 4]), "label 4 is out of range; allowed are 0..2 and 3"),
        ([-1], "label -1 is out of range"),
        (["cat", "horse"], "unknown class name 'horse'"),
        (["cat", 1], "mix"),
        ([True], "mix"),
        (torch.tensor([0.0, 1.0]), "integer tensor"),
        (torch.zeros(2, 1, dtype=torch.long), "1-D"),
        ("cat", "list of int or of str"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        class_conditioner()(labels=labels)


def test_names_without_class_names():
    with pytest.raises(ValueError, match="no class_names"):
        class_conditioner(class_names=())(labels=["cat"])


# --- condition dropout -------------------------------------------------------------------------

def test_text_dropout_rate_determinism_and_extremes(transformer):
    prompts = [f"prompt {i}" for i in range(4000)]
    dropped = transformer.drop(prompts, torch.Generator().manual_seed(1))
    rate = sum(p == "" for p in dropped) / len(prompts)
    assert abs(rate - 0.1) < 0.02  # 4 binomial standard deviations
    assert all(d in ("", p) for d, p in zip(dropped, prompts))
    assert dropped == transformer.drop(prompts, torch.Generator().manual_seed(1))
    assert dropped != transformer.drop(prompts, torch.Generator().manual_seed(2))
    none = build_conditioner(ConditionerConfig(**{**TINY_TRANSFORMER, "dropout_prob": 0.0}))
    assert none.drop(prompts) is prompts
    every = build_conditioner(ConditionerConfig(**{**TINY_TRANSFORMER, "dropout_prob": 1.0}))
    assert every.drop(prompts[:50]) == [""] * 50


def test_label_dropout_keeps_the_input_kind():
    conditioner = class_conditioner(dropout_prob=0.5)
    labels = torch.tensor([0, 1, 2] * 400, dtype=torch.int32)
    dropped = conditioner.drop(labels, torch.Generator().manual_seed(0))
    assert dropped.dtype == torch.int32 and abs((dropped == 3).float().mean() - 0.5) < 0.06
    assert torch.equal(dropped[dropped != 3], labels[dropped != 3])
    names = conditioner.drop(["cat", "dog"] * 20, torch.Generator().manual_seed(0))
    assert set(names) == {"cat", "dog", ""}
    ints = conditioner.drop([0, 1] * 20, torch.Generator().manual_seed(0))
    assert set(ints) == {0, 1, 3}
    # The same draws whatever the input kind.
    assert [n == "" for n in names] == [i == 3 for i in ints]
    with pytest.raises(ValueError, match="unknown class name"):
        conditioner.drop(["cat", "horse"])
    all_null = class_conditioner(dropout_prob=1.0).drop([0, 1, 2])
    assert all_null == [3, 3, 3]


# --- the conditioner interface -----------------------------------------------------------------

def test_unconditional_is_the_empty_prompt(transformer):
    uncond = transformer.unconditional(2)
    torch.testing.assert_close(uncond["context"], transformer([""] * 2)["context"])
    assert uncond["context_mask"].sum(1).tolist() == [2, 2]  # [CLS] [SEP]


def test_cached_encoding_gives_the_same_kwargs(transformer):
    encoding = transformer.encode_text(["a cat"])
    assert isinstance(encoding, TextEncoding)
    direct = transformer(["a cat"])
    cached = transformer.to_kwargs(encoding)
    assert cached.keys() == direct.keys()
    torch.testing.assert_close(cached["context"], direct["context"])


def test_pair_is_the_conditional_and_unconditional_input_of_each_kind(transformer):
    """``pair`` is what guidance samples with: the prompt's input and the empty prompt's (or the
    negatives'), class names and the null class, nothing for an unconditional model; an image
    condition goes to both halves; no gradients are kept."""
    cond, uncond = transformer.pair(["a cat", "a dog"])
    torch.testing.assert_close(cond["context"], transformer(["a cat", "a dog"])["context"])
    torch.testing.assert_close(uncond["context"], transformer.unconditional(2)["context"])
    assert not cond["context"].requires_grad
    _, negative = transformer.pair(["a cat"], ["blurry"])
    torch.testing.assert_close(negative["context"], transformer(["blurry"])["context"])
    concat = torch.ones(2, 3, 4, 4)
    cond, uncond = transformer.pair(["a cat", "a dog"], concat=concat)
    assert cond["concat"] is concat and uncond["concat"] is concat
    labels = class_conditioner()
    cond, uncond = labels.pair(["dog", "cat"])
    torch.testing.assert_close(cond["context"], labels(labels=[1, 0])["context"])
    torch.testing.assert_close(uncond["context"], labels.unconditional(2)["context"])
    none = build_conditioner(ConditionerConfig(kind="none"))
    assert none.pair(None) == ({}, {}) and none.pair(["", ""]) == ({}, {})
    with pytest.raises(ValueError, match="unconditional.*empty prompt"):
        none.pair(["a cat"])


def test_unconditional_kind_none():
    conditioner = build_conditioner(ConditionerConfig(kind="none"))
    assert conditioner(batch_size=3) == {} and conditioner.unconditional(3) == {}
    assert conditioner.context_dim is None and not conditioner.trainable
    assert conditioner.drop(None) is None
    with pytest.raises(ValueError, match="kind='none'"):
        conditioner(prompts=["a cat"])
    with pytest.raises(ValueError, match="encode_text needs a text conditioner"):
        conditioner.encode_text(["a cat"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": "a cat"}, "prompts must be a list of str"),
        ({"prompts": ["a cat", 7]}, r"prompts\[1\]=7"),
        ({"prompts": ["a cat"], "labels": [0]}, "conditioned on prompts, not labels"),
        ({"labels": [0]}, "conditioned on prompts, not labels"),
        ({"prompts": ["a", "b"], "batch_size": 3}, "batch_size=3 but 2"),
        ({"batch_size": 2}, "needs prompts"),
    ],
)
def test_bad_conditioner_input(transformer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        transformer(**kwargs)


def test_class_conditioner_rejects_prompts():
    with pytest.raises(ValueError, match="conditioned on labels, not prompts"):
        class_conditioner()(prompts=["a cat"])


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "bert"}, "kind='bert'"),
        ({"dropout_prob": 1.5}, "dropout_prob=1.5"),
        ({**TINY_TRANSFORMER, "transformer_heads": 5}, "transformer_width=32 must be divisible"),
        ({"kind": "minilm", "max_length": 600}, "max_length=600"),
        ({"kind": "class"}, "num_classes=0"),
        ({"kind": "class", "num_classes": 2, "class_names": ("a",)}, "class_names has 1"),
        ({"kind": "class", "num_classes": 2, "class_names": ("a", "a")}, "repeated"),
        ({"kind": "class", "num_classes": 2, "class_names": ("a", "")}, "non-empty"),
        ({**TINY_CLIP, "clip_layers": 1, "clip_layer": "penultimate"}, "clip_layers=1"),
        ({**TINY_CLIP, "clip_pad_token_id": -1}, "clip_pad_token_id=-1"),
    ],
)
def test_bad_config(fields, match):
    with pytest.raises(ValueError, match=match):
        ConditionerConfig(**fields)


def test_config_round_trip(tmp_path):
    config = ConditionerConfig(kind="class", num_classes=3, class_names=NAMES, class_mode="embedding")
    config.save(tmp_path / "conditioner.yaml")
    assert ConditionerConfig.load(tmp_path / "conditioner.yaml") == config
    with pytest.raises(ValueError, match="not one of"):
        ConditionerConfig.from_dict({"kind": "class", "class_mode": "sum", "num_classes": 2})


def test_no_warning_for_prompts_that_fit(transformer):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transformer(["a cat"] * 3)
