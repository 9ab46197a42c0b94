"""GGUF import: a llama.cpp-style GGUF written here from the tiny model converts back to the same model.

Float GGUFs must generate exactly what the original generates under greedy
decoding (the Q/K rows are stored permuted, as llama.cpp does, and undone by
``rope_traditional``). Quantized GGUFs cannot match the float original, so for
them the converted weights must equal the ``gguf`` package's own dequantization.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from darkbloom.node.models.gguf_import import GGUFImportError, hf_name, import_gguf
from darkbloom.node.models.local import describe
from tests.node.conftest import write_gguf

PROMPTS = [
    "hello",
    "what is the capital of france?",
    "one two three four",
    "the quick brown fox jumps over the lazy dog",
]


def _greedy(model_dir: Path) -> list[list[int]]:
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tok = load(str(model_dir))
    outs = []
    for p in PROMPTS:
        prompt = mx.array(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True))
        outs.append([int(t) for (t, _logprobs), _ in zip(generate_step(prompt, model, max_tokens=24), range(24))])
    return outs


@pytest.mark.parametrize("qtype", ["F32", "F16"])
def test_a_float_gguf_converts_to_a_model_that_generates_identically(
    tiny_model_dir: Path, tmp_path: Path, qtype: str
) -> None:
    gguf_file = write_gguf(tiny_model_dir, tmp_path / f"tiny.{qtype}.gguf", qtype)
    result = import_gguf(gguf_file, tmp_path / "converted", name="tiny-from-gguf")

    info, template_err = describe(result.path)
    assert (info.id, info.template_render_ok, template_err) == ("tiny-from-gguf", True, "")
    cfg = json.loads((result.path / "config.json").read_text())
    assert cfg["rope_traditional"] is True and cfg["tie_word_embeddings"] is True

    from mlx_lm.tokenizer_utils import load as load_tokenizer

    orig, conv = load_tokenizer(tiny_model_dir), load_tokenizer(result.path)
    for text in [*PROMPTS, "<|im_start|>user\nhi<|im_end|>", "  spaces\tand 123 numbers, ünïcödé"]:
        assert conv.encode(text) == orig.encode(text), text
    chat = [{"role": "user", "content": "hello"}]
    assert conv.apply_chat_template(chat, add_generation_prompt=True) == orig.apply_chat_template(
        chat, add_generation_prompt=True
    )
    assert conv.eos_token_ids == orig.eos_token_ids

    assert _greedy(result.path) == _greedy(tiny_model_dir)


def _gguf_dequantized(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader
    from gguf.quants import dequantize

    out = {}
    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[hf_name(t.name)] = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape).astype(np.float32)
    return out


@pytest.mark.parametrize(
    ("qtype", "dequantize", "fmt"), [("Q8_0", False, "q8"), ("Q4_1", True, "float32"), ("Q5_0", False, "float16")]
)
def test_quantized_weights_convert_to_exactly_what_the_gguf_holds(
    tiny_model_dir: Path, tmp_path: Path, qtype: str, dequantize: bool, fmt: str
) -> None:
    # Q8_0/Q4_1 go through mlx.core.load; Q5_0 cannot, and is dequantized with the gguf package.
    gguf_file = write_gguf(tiny_model_dir, tmp_path / f"tiny.{qtype}.gguf", qtype)
    result = import_gguf(gguf_file, tmp_path / "converted", dequantize=dequantize)
    assert result.weight_format == fmt
    saved = mx.load(str(result.path / "model.safetensors"))
    expected = _gguf_dequantized(gguf_file)
    for name, want in expected.items():
        if f"{name.removesuffix('.weight')}.scales" in saved:
            base = name.removesuffix(".weight")
            got = mx.dequantize(
                saved[name],
                saved[f"{base}.scales"].astype(mx.float32),
                saved[f"{base}.biases"].astype(mx.float32),
                group_size=32,
                bits=8 if qtype == "Q8_0" else 4,
            )
        else:
            got = saved[name]
        np.testing.assert_allclose(
            np.array(got.astype(mx.float32)), want, rtol=1e-3, atol=1e-3 if fmt == "float16" else 1e-5
        )
    assert len(_greedy(result.path)[0]) == 24  # it loads and generates


def test_bad_files_are_refused_with_a_reason(tiny_model_dir: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(GGUFImportError, match="not a readable GGUF"):
        import_gguf(junk, tmp_path / "a")
    with pytest.raises(GGUFImportError, match="is not a file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "b")
    other = write_gguf(tiny_model_dir, tmp_path / "other.gguf", arch="gpt2")
    with pytest.raises(GGUFImportError, match="architecture 'gpt2' is not supported"):
        import_gguf(other, tmp_path / "c")
    good = write_gguf(tiny_model_dir, tmp_path / "good.gguf")
    import_gguf(good, tmp_path / "d")
    with pytest.raises(GGUFImportError, match="already holds a model"):
        import_gguf(good, tmp_path / "d")


def test_a_sentencepiece_vocabulary_tokenizes_with_merges_by_score_and_byte_fallback() -> None:
    from darkbloom.node.models.gguf_tokenizer import build_tokenizer

    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = [
        "\u2581",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "llo",
        "hello",
        "\u2581hello",
        "\u2581w",
        "or",
        "\u2581wor",
        "ld",
        "\u2581world",
    ]
    tokens = pieces + words
    # Longer pieces score higher, as SentencePiece BPE vocabularies do.
    scores = [0.0] * len(pieces) + [float(len(w)) for w in words]
    types = [2, 3, 3] + [6] * 256 + [1] * len(words)
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.add_bos_token": True,
    }
    tok = build_tokenizer(meta)
    enc = tok.encode("hello world")
    assert enc.tokens == ["<s>", "\u2581hello", "\u2581world"]
    assert tok.decode(enc.ids, skip_special_tokens=True) == "hello world"
    accented = tok.encode("hé", add_special_tokens=False)
    assert "<0xC3>" in accented.tokens and "<0xA9>" in accented.tokens, "unknown characters fall back to bytes"
    assert tok.decode(accented.ids) == "hé"
