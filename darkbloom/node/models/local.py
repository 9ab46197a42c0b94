"""A local MLX model directory: its id, size, and a chat-template self-check."""

from __future__ import annotations

import json
from pathlib import Path

from darkbloom.node.engine.constrain import FORCEABLE_FORMATS, can_constrain, tool_format
from darkbloom.protocol import ModelInfo

PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello."},
]


class ModelDirError(ValueError):
    """The path is not a usable MLX model directory."""


def model_id_for(path: Path, config: dict) -> str:
    """The directory name, unless the config names the model (``darkbloom_model_id``)."""
    return str(config.get("darkbloom_model_id") or path.name)


def read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory")
    if not cfg.is_file():
        raise ModelDirError(f"{path} has no config.json; is it an MLX model directory?")
    try:
        return json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{cfg} is unreadable: {exc}") from exc


PROBE_TOOLS = [{"type": "function", "function": {"name": "probe", "parameters": {"type": "object", "properties": {}}}}]


def template_check(path: Path) -> tuple[bool, str, str]:
    """Render a probe conversation with the model's chat template.

    Returns:
        Whether it rendered, the error if not, and the model's tool-call
        format (mlx-lm's parser, e.g. ``json_tools``) when it supports tools
        (mlx-lm knows the format and the template renders tools), else "".
    """
    try:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        tok = load_tokenizer(path)
        out = tok.apply_chat_template(PROBE, add_generation_prompt=True, tokenize=False)
        if not out:
            return False, "template rendered an empty prompt", ""
    except Exception as exc:  # any failure means: never route to this model
        return False, f"{type(exc).__name__}: {exc}", ""
    tools = False
    if tok.has_tool_calling and tok.tool_parser is not None:
        try:
            with_tools = tok.apply_chat_template(PROBE, tools=PROBE_TOOLS, add_generation_prompt=True, tokenize=False)
            tools = '"probe"' in with_tools
        except Exception:  # a template that cannot render tools simply does not support them
            tools = False
    return True, "", tool_format(tok) if tools else ""


def template_renders(path: Path) -> tuple[bool, str]:
    """Whether the chat template renders a probe conversation, and the error if not."""
    ok, err, _ = template_check(path)
    return ok, err


def describe(path: Path) -> tuple[ModelInfo, str]:
    """Build the ``ModelInfo`` a node advertises for ``path`` (never hashes weights).

    Returns:
        The info and the template error ("" when the template renders).

    Raises:
        ModelDirError: not a model directory.
    """
    config = read_config(path)
    weights = list(path.glob("*.safetensors"))
    if not weights:
        raise ModelDirError(f"{path} holds no .safetensors weights")
    ok, err, tools = template_check(path)
    json_ok = ok and can_constrain(path)
    quant = config.get("quantization") or {}
    info = ModelInfo(
        id=model_id_for(path, config),
        size_bytes=sum(w.stat().st_size for w in weights),
        quantization=f"q{quant['bits']}" if isinstance(quant, dict) and "bits" in quant else str(config.get("torch_dtype", "")),
        template_render_ok=ok,
        context_length=int(config.get("max_position_embeddings") or 0),
        supports_tools=bool(tools),
        supports_json=json_ok,
        supports_logprobs=ok,
        supports_tool_choice=json_ok and tools in FORCEABLE_FORMATS,
    )
    return info, err
