"""Tokenizers built locally (no download) for the tiny offline pipelines the tests and examples save:
character-level CLIP, T5 and Qwen2 tokenizers. Their own module so that sd3.py and pipelines.py can both
use them without importing each other."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import List


def byte_level_vocab() -> List[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_clip_tokenizer(max_length: int):
    """A byte-level CLIPTokenizer with no merges (one token per character), built without any download."""
    from transformers import CLIPTokenizer

    chars = byte_level_vocab()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                             model_max_length=max_length, pad_token="<|endoftext|>")


def tiny_t5_tokenizer(max_length: int = 16):
    """A T5 (Unigram) tokenizer over single characters, built without any download."""
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord(" ") + 1, ord("~") + 1)]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)


def tiny_qwen_tokenizer(max_length: int = 64):
    """A Qwen2 byte-level BPE tokenizer with no merges (one token per byte) and Qwen's chat tokens."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(byte_level_vocab())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=max_length)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>"})
    return tokenizer
