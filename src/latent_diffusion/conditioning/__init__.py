"""Conditioning: text encoders (MiniLM, trainable transformer, CLIP), class labels, one conditioner.

``build_conditioner(ConditionerConfig(kind=...))`` gives a :class:`Conditioner` whose outputs are
UNet forward kwargs (``context``/``context_mask`` or ``class_labels``), with the unconditional
input and the condition dropout used for classifier-free guidance.
"""

from .clip import CLIPTextEncoder, CLIPTokenizer, clip_bpe_path, write_hf_tokenizer_files
from .conditioner import Conditioner, ConditionerConfig, build_conditioner
from .labels import NULL_CLASS_NAME, ClassLabelEncoder
from .text import MiniLMTextEncoder, TextEncoding, TransformerTextEncoder

__all__ = [
    "CLIPTextEncoder",
    "CLIPTokenizer",
    "ClassLabelEncoder",
    "Conditioner",
    "ConditionerConfig",
    "MiniLMTextEncoder",
    "NULL_CLASS_NAME",
    "TextEncoding",
    "TransformerTextEncoder",
    "build_conditioner",
    "clip_bpe_path",
    "write_hf_tokenizer_files",
]
