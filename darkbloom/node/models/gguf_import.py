"""Convert a llama-architecture GGUF file (llama.cpp, Ollama) into an MLX model directory.

Weights: ``mlx.core.load`` reads F32, F16, Q4_0, Q4_1 and Q8_0 tensors
directly (quantized ones as MLX's weight/scales/biases triplets); any other
type (K-quants, Q5_*, IQ*) is dequantized with the ``gguf`` package. The
tokenizer is rebuilt from the GGUF metadata with ``tokenizers`` and the chat
template is copied. llama.cpp stores Q and K rows permuted for its RoPE
layout; rather than undo that, the config says ``rope_traditional: true``,
which is the same rotation on the permuted rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_MX_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0"}
_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
GGUF_GROUP_SIZE = 32


class GGUFImportError(ValueError):
    """The file is not a GGUF this importer can convert; the message says why."""


@dataclass(frozen=True)
class ImportResult:
    """What ``import_gguf`` wrote."""

    path: Path
    model_id: str
    weight_format: str
    """``float32``, ``float16`` or ``q4``/``q8`` (mixed files name their main type)."""
    tensor_types: dict[str, int]


def hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; ``None`` for tensors we skip."""
    stem, _, suffix = gguf_name.rpartition(".")
    if m := re.fullmatch(r"blk\.(\d+)\.(\w+)", stem):
        part = _LAYER.get(m.group(2))
        return f"model.layers.{m.group(1)}.{part}.{suffix}" if part else None
    top = _TOP.get(stem)
    return f"{top}.{suffix}" if top else None


def _py(value: Any) -> Any:
    """MLX's GGUF metadata values (0-d and 1-d arrays) as plain Python."""
    return value.tolist() if hasattr(value, "tolist") else value


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
    """Metadata, plus either MLX's tensors or (for types MLX cannot read) a ``GGUFReader``.

    ``mlx.core.load`` is tried first: it parses a 50k-token vocabulary in a tenth
    of a second, where ``GGUFReader`` takes many seconds.
    """
    import mlx.core as mx

    try:
        raw, meta = mx.load(str(path), return_metadata=True)
        return {k: _py(v) for k, v in meta.items()}, raw, None
    except (RuntimeError, ValueError) as mx_error:
        from gguf import GGUFReader

        try:
            reader = GGUFReader(str(path))
        except (OSError, ValueError) as exc:
            raise GGUFImportError(f"{path} is not a readable GGUF file: {exc} (mlx: {mx_error})") from exc
        return {k: f.contents() for k, f in reader.fields.items()}, None, reader


def _config(meta: dict[str, Any], vocab_size: int, tied: bool, dtype: str) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFImportError(f"architecture {arch!r} is not supported (only llama)")

    def hp(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise GGUFImportError(f"the GGUF has no llama.{key}")
        return value

    hidden, heads = int(hp("embedding_length")), int(hp("attention.head_count"))
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(hp("block_count")),
        "intermediate_size": int(hp("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(hp("attention.head_count_kv", heads)),
        "rms_norm_eps": float(hp("attention.layer_norm_rms_epsilon", 1e-5)),
        "vocab_size": vocab_size,
        "max_position_embeddings": int(hp("context_length", 4096)),
        "rope_theta": float(hp("rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "tie_word_embeddings": tied,
        "torch_dtype": dtype,
    }
    rope_dim = meta.get("llama.rope.dimension_count")
    if rope_dim and int(rope_dim) != hidden // heads:
        cfg["head_dim"] = int(rope_dim)
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is not None:
            cfg[name] = int(value)
    return cfg


def _mx_tensors(
    raw: dict[str, Any], dequantize: bool, dtype: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """Rename MLX-loaded GGUF tensors; keep or dequantize the quantized triplets."""
    import mlx.core as mx

    out: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    types: dict[str, int] = {}
    for gname, arr in raw.items():
        if not gname.endswith(".weight") or (name := hf_name(gname)) is None:
            continue
        stem = gname.removesuffix("weight")
        if stem + "scales" in raw:
            w, s, b = arr, raw[stem + "scales"], raw[stem + "biases"]
            bits = w.shape[-1] * 32 // (s.shape[-1] * GGUF_GROUP_SIZE)  # packed uint32 words per group
            kind = f"q{bits}"
            if dequantize:
                # float32 scales: the arithmetic in float32, so nothing is lost on the way to float32 weights.
                s32, b32 = s.astype(mx.float32), b.astype(mx.float32)
                out[name] = mx.dequantize(w, s32, b32, group_size=GGUF_GROUP_SIZE, bits=bits).astype(dtype)
            else:
                base = name.removesuffix(".weight")
                out[name], out[f"{base}.scales"], out[f"{base}.biases"] = w, s, b
                quant[base] = {"group_size": GGUF_GROUP_SIZE, "bits": bits}
        else:
            kind = str(arr.dtype).removeprefix("mlx.core.")
            out[name] = arr.astype(dtype)
        types[kind] = types.get(kind, 0) + 1
    return out, quant, types


def _reader_tensors(reader: Any, dtype: Any) -> tuple[dict[str, Any], dict[str, int]]:
    """Every tensor dequantized to ``dtype`` with the ``gguf`` package (K-quants, Q5_*, IQ*...)."""
    import mlx.core as mx
    from gguf.quants import dequantize as gguf_dequantize

    out: dict[str, Any] = {}
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if (name := hf_name(t.name)) is None:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        if t.tensor_type.name in ("F32", "F16"):
            arr = np.asarray(t.data).reshape(shape)
        else:
            arr = gguf_dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        out[name] = mx.array(arr.astype(np.float32)).astype(dtype)
    return out, types


def _quant_config(quant: dict[str, dict[str, int]]) -> dict[str, Any]:
    """MLX-LM's quantization config: the commonest setting as default, the rest per layer."""
    if not quant:
        return {}
    bits = [q["bits"] for q in quant.values()]
    main = max(set(bits), key=bits.count)
    cfg: dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": main}
    for base, q in quant.items():
        if q["bits"] != main:
            cfg[base] = q
    return cfg


def import_gguf(
    gguf_path: str | Path,
    dest: str | Path,
    *,
    name: str | None = None,
    dequantize: bool = False,
    say: Callable[[str], None] = lambda _m: None,
) -> ImportResult:
    """Write an MLX model directory converted from ``gguf_path``.

    Args:
        gguf_path: A llama-architecture GGUF file.
        dest: The model directory to create (must not hold a model already).
        name: Model id to advertise (default: the directory name).
        dequantize: Store float32 weights instead of keeping Q4_0/Q4_1/Q8_0 quantized
            (fastest on a CPU with a good BLAS; types MLX cannot read are always dequantized).
        say: Progress messages.

    Raises:
        GGUFImportError: not a GGUF, not llama, or no tokenizer in its metadata.
    """
    import mlx.core as mx

    from darkbloom.node.models.gguf_tokenizer import build_tokenizer_files

    src, out = Path(gguf_path), Path(dest)
    if (out / "config.json").exists():
        raise GGUFImportError(f"{out} already holds a model; remove it or pick another --name")
    if not src.is_file():
        raise GGUFImportError(f"{src} is not a file")
    meta, raw, reader = read_gguf(src)
    tok_files, vocab_size = build_tokenizer_files(meta)
    if raw is not None:
        has_f16 = any(a.dtype == mx.float16 for k, a in raw.items() if not k.endswith((".scales", ".biases")))
        float_dtype = "float32" if dequantize or not has_f16 else "float16"
        weights, quant, types = _mx_tensors(raw, dequantize, getattr(mx, float_dtype))
        tied = "output.weight" not in raw
    else:
        # MLX cannot keep these types quantized: float32 on request, else float16 to stay small.
        float_dtype = "float32" if dequantize else "float16"
        weights, types = _reader_tensors(reader, getattr(mx, float_dtype))
        quant, tied = {}, not any(t.name == "output.weight" for t in reader.tensors)
    say(
        f"converting {src.name}: {sum(types.values())} weight tensors ({', '.join(f'{k} x{v}' for k, v in sorted(types.items()))})"
    )
    cfg = _config(meta, vocab_size, tied, float_dtype)
    if quant:
        cfg["quantization"] = _quant_config(quant)
    cfg["darkbloom_source"] = {"gguf": src.name, "tensor_types": types}
    if name:
        cfg["darkbloom_model_id"] = name
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    for fname, content in tok_files.items():
        (out / fname).write_text(content)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    fmt = f"q{cfg['quantization']['bits']}" if quant else float_dtype
    say(f"wrote {out} ({fmt} weights)")
    return ImportResult(out, name or out.name, fmt, types)
