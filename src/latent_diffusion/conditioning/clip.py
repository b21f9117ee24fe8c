"""CLIP text side of Stable Diffusion: an exact CLIP BPE tokenizer and a CLIPTextModel wrapper.

The tokenizer reproduces OpenAI CLIP / Stable Diffusion token ids from the BPE vocabulary
``bpe_simple_vocab_16e6.txt.gz`` that ships inside the ``open-clip-torch`` package (read as a
file: importing ``open_clip`` would pull in torchvision). Vocabulary layout (49,408 ids): the 256
byte symbols, the same with ``</w>``, 48,894 merges, then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407).

Two text normalizations, chosen explicitly so the ids never depend on what happens to be
installed (transformers' old slow tokenizer silently switched on ``ftfy``):

- ``"nfc"`` (default): Unicode NFC, then per-character lowercase. This is what transformers'
  ``CLIPTokenizer`` (the tokenizers-backed one that diffusers' SD pipelines load) does, so a
  pipeline exported with :func:`write_hf_tokenizer_files` tokenizes exactly like ours.
- ``"ftfy"``: OpenAI's / open_clip's ``basic_clean``: ``ftfy.fix_text``, HTML-unescape twice,
  whitespace clean, ``str.lower``. Needs the ``ftfy`` package.

Both agree on ordinary prompts; they differ on curly quotes, ligatures, HTML entities, full-width
characters and a word-final capital sigma.

A literal ``<|endoftext|>`` in a prompt becomes the end token, as in OpenAI's code and
transformers (open_clip >= 2 renamed its special tokens, so there it is plain text). With pad id 0
we still BPE-merge ``!`` like OpenCLIP, which SD 2 was trained with; transformers' tokenizer with
``pad_token="!"`` (diffusers' SD 2 folder) instead splits each ``!`` off as the pad token.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import unicodedata
from pathlib import Path
from typing import Literal

import regex
import torch

from ..io import atomic_write_text
from .text import FrozenModule, TextEncoding, check_prompts, pad_and_truncate

START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
START_ID, END_ID = 49406, 49407
VOCAB_SIZE = 49408
NUM_MERGES = 49152 - 256 - 2  # what OpenAI's SimpleTokenizer keeps of the file
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
INSTALL_HINT = "pip install --no-deps open-clip-torch==3.3.0"

# OpenAI CLIP's pre-tokenization pattern: special tokens, English contractions, letter runs,
# single digits, runs of anything else that is not whitespace.
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

Normalization = Literal["nfc", "ftfy"]


def clip_bpe_path() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch package."""
    spec = importlib.util.find_spec("open_clip")  # locates the folder without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / BPE_FILE if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"the CLIP tokenizer needs {BPE_FILE} from the open-clip-torch package, which is not "
            f"installed; install it without its torchvision dependency: {INSTALL_HINT}"
        )
    return path


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:  # whitespace/control bytes move past 255 so BPE never sees them
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@functools.lru_cache(maxsize=1)
def load_clip_bpe() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The CLIP vocabulary (tokens in id order) and its merges (in rank order)."""
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : NUM_MERGES + 1])  # line 0: header
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += [START_TOKEN, END_TOKEN]
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{clip_bpe_path()}: expected {VOCAB_SIZE} tokens, built {len(vocab)}")
    return tuple(vocab), merges  # type: ignore[return-value]


def _normalize_nfc(text: str) -> str:
    # Per-character lowercase mirrors the tokenizers library (no final-sigma rule of str.lower).
    return "".join(ch.lower() for ch in unicodedata.normalize("NFC", text))


def _normalize_ftfy(text: str) -> str:
    try:
        import ftfy
    except ImportError as err:
        raise ImportError("normalization='ftfy' needs the ftfy package: pip install ftfy") from err
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """OpenAI CLIP's byte-level BPE tokenizer: ``<|startoftext|> tokens <|endoftext|> pad...``.

    ``pad_token_id`` is 49407 (end token) for SD 1.x / transformers, 0 (``!``) for SD 2.x /
    open_clip. Calling it returns ``input_ids`` [B, max_length] and the real-token ``mask``.
    """

    def __init__(
        self, max_length: int = 77, pad_token_id: int = END_ID, normalization: Normalization = "nfc"
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length={max_length} must be >= 2 (start and end tokens)")
        if not 0 <= pad_token_id < VOCAB_SIZE:
            raise ValueError(f"pad_token_id={pad_token_id} must lie in [0, {VOCAB_SIZE - 1}]")
        if normalization not in ("nfc", "ftfy"):
            raise ValueError(f"normalization={normalization!r} is not supported; choose 'nfc' or 'ftfy'")
        self.max_length, self.pad_token_id, self.normalization = max_length, pad_token_id, normalization
        vocab, merges = load_clip_bpe()
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = vocab
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._cache: dict[str, tuple[str, ...]] = {START_TOKEN: (START_TOKEN,), END_TOKEN: (END_TOKEN,)}

    def normalize(self, text: str) -> str:
        """Clean and lowercase text as the chosen normalization does."""
        return _normalize_nfc(text) if self.normalization == "nfc" else _normalize_ftfy(text)

    def bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-encoded word into BPE symbols, the last one marked with ``</w>``."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            # Merge the lowest-ranked adjacent pair everywhere it occurs (left to right).
            ranked = [(self.bpe_ranks.get(pair, NUM_MERGES), pair) for pair in zip(parts, parts[1:])]
            rank, best = min(ranked)
            if rank == NUM_MERGES:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        if len(self._cache) < 100_000:  # bounded: prompts from a large dataset would grow it forever
            self._cache[word] = tuple(parts)
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens and without truncation."""
        ids = []
        for piece in CLIP_PATTERN.findall(self.normalize(text)):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(word))
        return ids

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of token ids, words split at ``</w>``; stops at the end token (padding follows)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if END_ID in ids:
            ids = ids[: ids.index(END_ID)]
        text = "".join(self.decoder[i] for i in ids if i != START_ID)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` [B, max_length] (long) and ``mask`` [B, max_length] (bool)."""
        sequences = [[START_ID, *self.encode(p), END_ID] for p in check_prompts(prompts)]
        return pad_and_truncate(sequences, self.max_length, self.pad_token_id, "CLIP tokenizer")


def write_hf_tokenizer_files(
    directory: str | Path, max_length: int = 77, pad_token_id: int = END_ID
) -> tuple[Path, Path]:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for transformers.

    ``transformers.CLIPTokenizer.from_pretrained(directory)`` then tokenizes like
    :class:`CLIPTokenizer` with ``normalization="nfc"`` (diffusers' ``tokenizer/`` folder).
    Returns the paths of ``vocab.json`` and ``merges.txt``.
    """
    vocab, merges = load_clip_bpe()
    if not 0 <= pad_token_id < VOCAB_SIZE:
        raise ValueError(f"pad_token_id={pad_token_id} must lie in [0, {VOCAB_SIZE - 1}]")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    atomic_write_text(vocab_path, json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(merges_path, "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": vocab[pad_token_id],
        "do_lower_case": True,
    }
    text = json.dumps(config, indent=2, ensure_ascii=False)
    atomic_write_text(directory / "tokenizer_config.json", text)
    return vocab_path, merges_path


class CLIPTextEncoder(FrozenModule):
    """Stable Diffusion's frozen CLIP text encoder: transformers' ``CLIPTextModel`` from a config.

    Weights are random until a checkpoint is loaded into ``self.model``. SD 1.x: hidden 768,
    12 layers, 12 heads, intermediate 3072, quick_gelu, ``layer="last"``. SD 2.x (OpenCLIP
    ViT-H): hidden 1024, 24 layers, 16 heads, intermediate 4096, gelu, ``layer="penultimate"``
    (or 23 layers with ``"last"``, as diffusers stores it). As in SD, the model runs without an
    attention mask (only the causal one), so padding states are the ones SD's UNet saw.
    """

    def __init__(
        self,
        hidden: int = 768,
        layers: int = 12,
        heads: int = 12,
        intermediate: int = 3072,
        max_length: int = 77,
        layer: Literal["last", "penultimate"] = "last",
        activation: Literal["quick_gelu", "gelu"] = "quick_gelu",
        pad_token_id: int = END_ID,
        normalization: Normalization = "nfc",
    ) -> None:
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer={layer!r} is not supported; choose 'last' or 'penultimate'")
        if layer == "penultimate" and layers < 2:
            raise ValueError(f"layer='penultimate' needs layers >= 2, got layers={layers}")
        if hidden % heads != 0:
            raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
        from transformers import CLIPTextConfig, CLIPTextModel

        self.layer = layer
        self.tokenizer = CLIPTokenizer(max_length, pad_token_id, normalization)
        config = CLIPTextConfig(
            vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=intermediate,
            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
            hidden_act=activation, pad_token_id=pad_token_id, bos_token_id=START_ID, eos_token_id=END_ID,
        )
        self.model = CLIPTextModel(config)
        self.freeze()

    @property
    def width(self) -> int:
        """Feature width D of the encoding."""
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Number of token positions (77 for SD)."""
        return self.tokenizer.max_length

    @torch.no_grad()
    def encode_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """States [B, L, hidden] of token ids [B, L] from the chosen layer (final LayerNorm applied)."""
        if self.layer == "last":
            return self.model(input_ids=input_ids).last_hidden_state
        out = self.model(input_ids=input_ids, output_hidden_states=True)
        # SD 2: the second-to-last block's output, then the final LayerNorm (ln_final).
        return self.model.final_layer_norm(out.hidden_states[-2])

    def forward(self, prompts: list[str]) -> TextEncoding:
        """Encode prompts into states [B, max_length, hidden] and the real-token mask."""
        input_ids, mask = self.tokenizer(prompts)
        device = self.model.final_layer_norm.weight.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        return TextEncoding(states=self.encode_tokens(input_ids), mask=mask)


__all__ = [
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "clip_bpe_path",
    "load_clip_bpe",
    "write_hf_tokenizer_files",
]
