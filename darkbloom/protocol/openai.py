"""OpenAI-compatible consumer shapes: chat request, response, stream chunk, error.

Requests are decoded with msgspec into typed structs; anything the schema does
not accept becomes a ``RequestError`` carrying the OpenAI error fields, so the
HTTP layer turns it into ``{"error": {...}}`` without guessing.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from darkbloom.protocol.frames import ChatMessage, SamplingParams


class RequestError(Exception):
    """A consumer request the coordinator refuses, in OpenAI error terms."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {message, type, param, code}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ContentPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class StreamOptions(msgspec.Struct, frozen=True):
    include_usage: bool = False


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct, frozen=True):
    """``POST /v1/chat/completions`` body. Unknown fields are ignored, as OpenAI does."""

    model: str
    messages: list[Message]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None


_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)

DEFAULT_MAX_TOKENS = 256


def _flatten(content: str | list[ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.type != "text":
            raise RequestError(400, f"content part type {part.type!r} is not supported; only 'text'", param="messages")
        parts.append(part.text or "")
    return "".join(parts)


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat completion body.

    Raises:
        RequestError: 400 for empty or invalid JSON, a missing or empty
            ``model`` or ``messages``, ``n`` > 1, or a bad ``max_tokens``.
    """
    if not body.strip():
        raise RequestError(400, "request body is empty; expected a JSON object")
    try:
        req = _chat_decoder.decode(body)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        param = msg.rsplit("`$.", 1)[-1].rstrip("`").split(".")[0].split("[")[0] if "`$." in msg else None
        if param is None and "missing required field `" in msg:  # a top-level field: name it
            param = msg.split("`")[1]
        raise RequestError(400, f"invalid request: {msg}", param=param) from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"invalid JSON body: {exc}") from None
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    if not req.messages:
        raise RequestError(400, "messages must be a non-empty array", param="messages")
    if req.n is not None and req.n != 1:
        raise RequestError(400, f"n={req.n} is not supported: only n=1 (send separate requests for more choices)", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise RequestError(400, f"{name} must be a positive integer", param=name)
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise RequestError(400, "temperature must be between 0 and 2", param="temperature")
    if req.top_p is not None and not 0 < req.top_p <= 1:
        raise RequestError(400, "top_p must be in (0, 1]", param="top_p")
    return req


def to_internal(req: ChatCompletionRequest) -> tuple[tuple[ChatMessage, ...], SamplingParams]:
    """Translate an OpenAI chat request into the node's messages and sampling.

    ``max_completion_tokens`` wins over ``max_tokens``; a single ``stop``
    string becomes a list; ``user`` and ``metadata`` are dropped here so they
    never reach a node.
    """
    messages = tuple(
        ChatMessage(
            role="system" if m.role == "developer" else m.role,
            content=_flatten(m.content),
            name=m.name,
            tool_call_id=m.tool_call_id,
        )
        for m in req.messages
    )
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    params = SamplingParams(
        max_tokens=req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        stop=stop,
    )
    return messages, params


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_chunk(
    completion_id: str,
    model: str,
    created: int,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
    empty_choices: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` object for a stream."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if empty_choices else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_completion(
    completion_id: str, model: str, created: int, content: str, finish_reason: str, usage: dict[str, int]
) -> dict[str, Any]:
    """A whole ``chat.completion`` object for a non-streaming answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def model_list(model_ids: list[str], created: int = 0) -> dict[str, Any]:
    """The ``GET /v1/models`` list object."""
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": created, "owned_by": "darkbloom"} for m in model_ids],
    }
