"""Rebuild a Hugging Face ``tokenizer.json`` from a GGUF file's ``tokenizer.ggml.*`` metadata.

Two tokenizer families are in llama GGUFs: ``gpt2`` (byte-level BPE with
merges: Llama 3, SmolLM, Qwen-style vocabularies) and ``llama``
(SentencePiece BPE with scores and byte-fallback tokens: Llama 2, Mistral,
TinyLlama). Both become a ``tokenizers`` BPE model; the pre-tokenizer follows
``tokenizer.ggml.pre`` the way llama.cpp does.
"""

from __future__ import annotations

import json
from typing import Any

CONTROL, USER_DEFINED, BYTE = 3, 4, 6  # llama.cpp's token types

_LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _field(meta: dict[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key)
    return default if value is None else value


def _byte_level(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre == "smollm":  # llama.cpp: every digit on its own, then the GPT-2 split
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in ("llama-bpe", "llama3"):
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def sentencepiece_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece BPE vocabulary: a merge ranks by its result's score."""
    found: list[tuple[float, int, int, str, str]] = []
    for piece, pid in vocab.items():
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                found.append((-scores[pid], vocab[left], vocab[right], left, right))
    found.sort()
    return [(left, right) for _s, _l, _r, left, right in found]


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF's vocabulary.

    Raises:
        GGUFImportError: no vocabulary, or a tokenizer family this does not know.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    from darkbloom.node.models.gguf_import import GGUFImportError

    kind = _field(meta, "tokenizer.ggml.model")
    tokens: list[str] = list(_field(meta, "tokenizer.ggml.tokens") or [])
    if not tokens:
        raise GGUFImportError("the GGUF carries no tokenizer (tokenizer.ggml.tokens is missing)")
    types = list(_field(meta, "tokenizer.ggml.token_type") or [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in _field(meta, "tokenizer.ggml.merges") or []]
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = _byte_level(str(_field(meta, "tokenizer.ggml.pre", "default")))
        tok.decoder = decoders.ByteLevel()
    elif kind == "llama":
        scores = [float(s) for s in _field(meta, "tokenizer.ggml.scores") or [0.0] * len(tokens)]
        unk = tokens[int(_field(meta, "tokenizer.ggml.unknown_token_id", 0))]
        tok = Tokenizer(
            models.BPE(vocab, sentencepiece_merges(vocab, scores), unk_token=unk, fuse_unk=True, byte_fallback=True)
        )
        steps = [normalizers.Replace(" ", "\u2581")]
        if _field(meta, "tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.normalizer = normalizers.Sequence(steps)
        strip = [decoders.Strip(" ", 1, 0)] if _field(meta, "tokenizer.ggml.add_space_prefix", True) else []
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
        )
    else:
        raise GGUFImportError(f"tokenizer model {kind!r} is not supported (gpt2 and llama are)")
    special = [
        AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)
    ]
    tok.add_special_tokens(special)
    bos_id = _field(meta, "tokenizer.ggml.bos_token_id")
    if _field(meta, "tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[int(bos_id)]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))]
        )
    return tok


def build_tokenizer_files(meta: dict[str, Any]) -> tuple[dict[str, str], int]:
    """``tokenizer.json``, ``tokenizer_config.json`` (with the chat template) and the special tokens map.

    Returns:
        File name -> content, and the vocabulary size.
    """
    tok = build_tokenizer(meta)
    tokens: list[str] = list(_field(meta, "tokenizer.ggml.tokens"))

    def token(key: str) -> str | None:
        tid = _field(meta, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

    special = {
        k: v
        for k in ("bos", "eos", "unk", "pad")
        if (v := token("padding" if k == "pad" else "unknown" if k == "unk" else k))
    }
    cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{f"{k}_token": v for k, v in special.items()},
        "model_max_length": int(_field(meta, "llama.context_length", 4096)),
        "clean_up_tokenization_spaces": False,
    }
    template = _field(meta, "tokenizer.chat_template")
    if template:
        cfg["chat_template"] = str(template)
    files = {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(cfg, indent=2),
        "special_tokens_map.json": json.dumps({f"{k}_token": v for k, v in special.items()}, indent=2),
    }
    return files, len(tokens)
