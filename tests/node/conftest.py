"""Node test helpers: an engine on the tiny model, copies of the tiny model under other names."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from darkbloom.node.engine.mlx_engine import MLXEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[MLXEngine]:
    """One engine (8 slots) per test module, shut down cleanly at its end."""
    eng = MLXEngine(tiny_model_dir, "tiny", max_concurrency=8)
    eng.wait_ready(timeout=60)
    yield eng
    eng.close()
    assert not eng._thread.is_alive()


def copy_model(src: Path, dest: Path, model_id: str | None = None) -> Path:
    """Copy a model directory; ``model_id`` (default: the new dir name) is what a node advertises."""
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["darkbloom_model_id"] = model_id or dest.name
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _llama_cpp_permute(w, n_head: int):  # type: ignore[no-untyped-def]
    """What llama.cpp's convert_hf_to_gguf.py does to Q and K rows for its RoPE layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def write_gguf(model_dir: Path, dest: Path, qtype: str = "F32", *, arch: str = "llama") -> Path:
    """Write ``model_dir`` (an HF-layout llama) as a llama.cpp-style GGUF, 2-D weights stored as ``qtype``."""
    import gguf
    import mlx.core as mx
    import numpy as np

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    weights = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(model_dir / "model.safetensors")).items()}
    writer = gguf.GGUFWriter(str(dest), arch)
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg["rope_theta"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["content"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_chat_template(tok_cfg["chat_template"])
    qt = gguf.GGMLQuantizationType[qtype]
    for name, arr in weights.items():
        stem = name.removesuffix(".weight")
        if stem == "model.embed_tokens":
            gname = "token_embd"
        elif stem == "model.norm":
            gname = "output_norm"
        elif stem == "lm_head":
            gname = "output"
        else:
            _, _, layer, part = stem.split(".", 3)
            gname = f"blk.{layer}.{_GGUF_NAMES[part]}"
            if part == "self_attn.q_proj":
                arr = _llama_cpp_permute(arr, cfg["num_attention_heads"])
            elif part == "self_attn.k_proj":
                arr = _llama_cpp_permute(arr, cfg["num_key_value_heads"])
        if arr.ndim == 2 and qt != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{gname}.weight", gguf.quants.quantize(arr, qt), raw_dtype=qt)
        else:
            writer.add_tensor(f"{gname}.weight", arr.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
