"""The CLIP tokenizer against references: transformers' CLIPTokenizer and OpenAI's own code."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch
import transformers

from latent_diffusion.conditioning import clip as clip_module
from latent_diffusion.conditioning.clip import (
    END_ID,
    START_ID,
    VOCAB_SIZE,
    CLIPTokenizer,
    clip_bpe_path,
    write_hf_tokenizer_files,
)

LONG = "a very detailed matte painting of a castle on a hill at sunset, " * 12
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "Hello, World!!! 123 4567.89 -- (parenthesis) [brackets] {braces}",
    "naïve café — déjà vu, CAFÉ",
    "e\u0301 (decomposed accent)",
    "emoji 🐱🚀 party 🎉👍🏽",
    "日本語のテキスト and 中文",
    "it's they're we'll I'd you've don't STOP's",
    "  lots   of\twhitespace\n here  ",
    "x^2 + y_1 = 3.14159e10 @home #tag $5 100%",
    "<|endoftext|> inside a prompt",
    LONG,
    LONG + " and another " + LONG,
]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Folders written by write_hf_tokenizer_files for SD 1 (pad 49407) and SD 2 (pad 0)."""
    sd1, sd2 = tmp_path_factory.mktemp("sd1"), tmp_path_factory.mktemp("sd2")
    write_hf_tokenizer_files(sd1, max_length=77, pad_token_id=END_ID)
    write_hf_tokenizer_files(sd2, max_length=77, pad_token_id=0)
    return {END_ID: sd1, 0: sd2}


def tokenize_quietly(tokenizer, prompts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tokenizer(prompts)


def test_known_stable_diffusion_ids():
    # Ids published with SD 1.x tokenizer examples: a</w>=320, photo</w>=1125, of</w>=539, cat</w>=2368.
    ids, mask = CLIPTokenizer()(["a photo of a cat"])
    assert ids[0, :7].tolist() == [START_ID, 320, 1125, 539, 320, 2368, END_ID]
    assert (ids[0, 7:] == END_ID).all() and ids.shape == (1, 77)
    assert mask[0].tolist() == [True] * 7 + [False] * 70


@pytest.mark.parametrize("pad", [END_ID, 0])
def test_parity_with_transformers_clip_tokenizer(hf_folders, pad):
    # transformers >= 5 has one CLIPTokenizer (tokenizers-backed): NFC + lowercase, no ftfy,
    # which is what normalization="nfc" implements.
    reference = transformers.CLIPTokenizer.from_pretrained(str(hf_folders[pad]))
    assert reference.pad_token_id == pad and reference.model_max_length == 77
    # With pad_token "!" (diffusers' SD 2 tokenizer), transformers splits every "!" of a prompt
    # off as the special pad token; OpenCLIP, which SD 2 was trained with, BPE-merges it like
    # any punctuation, and so do we (checked against OpenAI's code below).
    prompts = [p for p in PROMPTS if pad != 0 or "!" not in p]
    expected = reference(prompts, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
    ids, mask = tokenize_quietly(CLIPTokenizer(77, pad, "nfc"), prompts)
    for i, prompt in enumerate(prompts):
        assert ids[i].tolist() == expected["input_ids"][i].tolist(), prompt
    assert torch.equal(mask, expected["attention_mask"].bool())


def load_openai_reference():
    """OpenAI's SimpleTokenizer (open_clip's verbatim copy), loaded from its file.

    Executing tokenizer.py alone does not run open_clip/__init__.py, which needs torchvision.
    """
    pytest.importorskip("ftfy")
    path = clip_bpe_path().parent / "tokenizer.py"
    spec = importlib.util.spec_from_file_location("openai_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_ftfy_normalization_matches_openai_reference():
    reference = load_openai_reference()
    ours = CLIPTokenizer(77, 0, "ftfy")
    # Cases where ftfy's clean-up matters, beyond the shared prompt list.
    extra = ["“curly quotes” and the ﬁ ligature", "&amp; html &lt;tag&gt; &#39;",
             "ＦＵＬＬ ｗｉｄｔｈ",
             "ΟΔΟΣ Σ (final sigma)"]
    # open_clip >= 2 renamed its special tokens to <start_of_text>, so a literal
    # "<|endoftext|>" is plain text there; OpenAI's original and transformers treat it as the
    # special token, as ours does (tested below).
    prompts = [p for p in PROMPTS if "<|endoftext|>" not in p] + extra
    expected = reference(prompts, context_length=77)
    ids, _ = tokenize_quietly(ours, prompts)
    for i, prompt in enumerate(prompts):
        assert ids[i].tolist() == expected[i].tolist(), prompt


def test_normalizations_differ_only_where_documented():
    pytest.importorskip("ftfy")
    nfc, ftfy_mode = CLIPTokenizer(normalization="nfc"), CLIPTokenizer(normalization="ftfy")
    for prompt in ["a photo of a cat", "Hello, World!!! 123", "naïve café 🐱"]:
        assert nfc.encode(prompt) == ftfy_mode.encode(prompt)
    for prompt in ["“quoted”", "&amp;", "ＡＢＣ", "ΟΔΟΣ"]:
        assert nfc.encode(prompt) != ftfy_mode.encode(prompt)
    # ftfy straightens quotes; html entities are unescaped.
    assert ftfy_mode.encode("“quoted”") == ftfy_mode.encode('"quoted"')
    assert ftfy_mode.encode("&amp;") == ftfy_mode.encode("&")


def test_literal_special_token_and_empty_prompt():
    ids, mask = CLIPTokenizer()(["<|endoftext|>", ""])
    assert ids[0, :3].tolist() == [START_ID, END_ID, END_ID] and mask[0].sum() == 3
    assert ids[1, :2].tolist() == [START_ID, END_ID] and mask[1].sum() == 2


def test_truncation_keeps_end_token_and_warns_once():
    tokenizer = CLIPTokenizer(max_length=77, pad_token_id=0)
    full = tokenizer.encode(LONG)
    with pytest.warns(UserWarning, match="max_length=77") as record:
        ids, mask = tokenizer([LONG, "short", LONG])
    assert len(record) == 1 and "2 prompt(s)" in str(record[0].message)
    assert ids[0].tolist() == [START_ID, *full[:75], END_ID]
    assert mask[0].all() and mask[1].sum() == 3 and (ids[1, 3:] == 0).all()


def test_decode_round_trip():
    tokenizer = CLIPTokenizer(pad_token_id=0)
    ids, _ = tokenizer(["A photo of an astronaut, riding 🐱 naïve"])
    assert tokenizer.decode(ids[0]) == "a photo of an astronaut , riding 🐱 naïve"


def test_written_vocabulary_files(hf_folders):
    folder = hf_folders[0]
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = (folder / "merges.txt").read_text().splitlines()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert len(vocab) == VOCAB_SIZE == len(set(vocab.values()))
    assert vocab["<|startoftext|>"] == START_ID and vocab["<|endoftext|>"] == END_ID
    assert vocab["a</w>"] == 320 and vocab["!"] == 0
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert config["pad_token"] == "!"


def test_missing_vocabulary_names_the_install_command(monkeypatch):
    monkeypatch.setattr(clip_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps open-clip-torch==3\.3\.0"):
        clip_bpe_path()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_length": 1}, "max_length=1"),
        ({"pad_token_id": VOCAB_SIZE}, "pad_token_id=49408"),
        ({"normalization": "nfkc"}, "normalization='nfkc'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLIPTokenizer(**kwargs)


@pytest.mark.parametrize("prompts", ["a cat", ["a cat", 3], [], None])
def test_bad_prompts(prompts):
    with pytest.raises(ValueError, match="prompt"):
        CLIPTokenizer()(prompts)
