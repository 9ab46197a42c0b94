"""Build a tiny random Llama-style MLX model directory, offline, in seconds.

The model answers with random tokens, but it exercises every real code path:
``mlx_lm.load``, the tokenizer with its chat template, batching, streaming and
token accounting. Tests and ``darkbloom up`` (when no real model is at hand)
use it so that nothing ever touches a model hub.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    # ChatML with the common JSON tool-call format (<tool_call>{"name", "arguments"}</tool_call>),
    # so the tiny model exercises tool rendering and parsing like a Qwen or Hermes model.
    "{% if tools %}<|im_start|>system\nYou may call these tools:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n"
    'Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n{% endif %}'
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}"
    "{% for tool_call in message.tool_calls or [] %}"
    "{% if tool_call.function %}{% set tool_call = tool_call.function %}{% endif %}"
    '<tool_call>{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}</tool_call>'
    "{% endfor %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. hello world, this is darkbloom, "
    "a private inference network. what is the capital of france? paris is the "
    "capital of france. one two three four five six seven eight nine ten. "
    "system user assistant tool function arguments name content message reply "
)


def _build_tokenizer(vocab_size: int) -> "object":
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return tok


def build_tiny_model(
    path: str | Path,
    *,
    name: str | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
    context_length: int = 2048,
) -> Path:
    """Write a tiny random Llama model directory that ``mlx_lm.load`` accepts.

    Args:
        path: Directory to create (its parents are created too).
        name: Model id advertised by a node; defaults to the directory name.
        hidden_size: Width of the model.
        num_layers: Number of transformer blocks.
        vocab_size: Size of the byte-level BPE vocabulary.
        seed: Seed for the random weights, so builds are reproducible.
        context_length: The context the config declares (``max_position_embeddings``).

    Returns:
        The model directory.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(vocab_size)
    real_vocab = tok.get_vocab_size()
    eos_id = tok.token_to_id("<|im_end|>")
    config = {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": hidden_size * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": real_vocab,
        "max_position_embeddings": context_length,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "eos_token_id": eos_id,
        "bos_token_id": tok.token_to_id("<|endoftext|>"),
        "torch_dtype": "float32",
    }
    if name:
        config["darkbloom_model_id"] = name
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # Scale the embeddings up so that sampling is not uniform noise: greedy
    # decoding then varies with the prompt, which the oracle tests rely on.
    model.apply(lambda a: a * 8.0 if a.ndim == 2 else a)
    mx.eval(model.parameters())
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tok.save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )
    del nn
    return out
