"""Anthropic Messages API shapes (``POST /v1/messages``): request, message, stream events, errors.

Requests translate to the same chat messages and sampling as every other
adapter. Errors are Anthropic's ``{"type": "error", "error": {"type",
"message"}}``; the adapter raises the shared ``RequestError`` and
``error_body`` renders it in this shape, mapping the status to Anthropic's
error type.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from darkbloom.protocol.frames import ChatMessage, SamplingParams
from darkbloom.protocol.openai import RequestError, check_sampling, decode_body

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn"}
"""Node finish reasons as Anthropic stop reasons."""


def stop_reason(finish_reason: str, stop_sequence: str | None) -> str:
    """Anthropic's ``stop_reason``: ``stop_sequence`` when one of the caller's stop strings ended it."""
    return "stop_sequence" if stop_sequence is not None and finish_reason == "stop" else STOP_REASONS[finish_reason]


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (``api_error`` for other 5xx)."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(err: RequestError) -> dict[str, Any]:
    """The Anthropic error object for a refused or failed request."""
    return {"type": "error", "error": {"type": error_type(err.status), "message": err.message}}


class ContentBlock(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class MessageParam(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class MessagesRequest(msgspec.Struct, frozen=True):
    """``POST /v1/messages`` body. Unknown fields are ignored."""

    model: str
    max_tokens: int
    messages: list[MessageParam]
    system: str | list[ContentBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


_decoder = msgspec.json.Decoder(MessagesRequest)


class CountTokensRequest(msgspec.Struct, frozen=True):
    """``POST /v1/messages/count_tokens`` body: a Messages body without ``max_tokens`` or sampling."""

    model: str
    messages: list[MessageParam]
    system: str | list[ContentBlock] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


_count_decoder = msgspec.json.Decoder(CountTokensRequest)


def _text(content: str | list[ContentBlock], param: str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for block in content:
        if block.type != "text":
            raise RequestError(
                400, f"{param}: content block type {block.type!r} is not supported; only 'text'", param=param
            )
        out.append(block.text or "")
    return "".join(out)


def _refuse_unsupported(req: MessagesRequest | CountTokensRequest) -> None:
    if not req.model:
        raise RequestError(400, "model: must be a non-empty string", param="model")
    if not req.messages:
        raise RequestError(400, "messages: at least one message is required", param="messages")
    for name in ("tools", "tool_choice", "thinking", "top_k"):
        if getattr(req, name, None) is not None:
            raise RequestError(400, f"{name}: not supported for model {req.model!r} on this network", param=name)


def _chat(req: MessagesRequest | CountTokensRequest) -> tuple[list[ChatMessage], bool]:
    """The conversation as chat messages (``system`` first), and whether its final message is a prefill."""
    messages = []
    if req.system:
        messages.append(ChatMessage(role="system", content=_text(req.system, "system")))
    for i, m in enumerate(req.messages):
        messages.append(ChatMessage(role=m.role, content=_text(m.content, f"messages.{i}.content")))
    # A final assistant message is the start of the answer (prefill): the model continues it, and the
    # response holds only what it adds. An empty one asks for nothing; Anthropic refuses trailing whitespace.
    prefill = messages[-1].role == "assistant"
    if prefill and not messages[-1].content:
        messages.pop()
        prefill = False
    if prefill and messages[-1].content != messages[-1].content.rstrip():
        raise RequestError(400, "messages: final assistant content cannot end with trailing whitespace", param="messages")
    if not messages or messages[-1].role == "system":
        raise RequestError(400, "messages: the conversation needs a user message", param="messages")
    return messages, prefill


def parse_count_tokens_request(body: bytes) -> tuple[CountTokensRequest, tuple[ChatMessage, ...], SamplingParams]:
    """Decode a ``count_tokens`` body: the conversation rendered as ``/v1/messages`` would render it.

    Raises:
        RequestError: 400 as ``parse_messages_request`` (no ``max_tokens`` needed).
    """
    req: CountTokensRequest = decode_body(_count_decoder, body)
    _refuse_unsupported(req)
    messages, prefill = _chat(req)
    # One token at most: a node that predates ``count_only`` generates it and reports the same count.
    return req, tuple(messages), SamplingParams(max_tokens=1, temperature=0.0, continue_final=prefill, count_only=True)


def parse_messages_request(body: bytes) -> tuple[MessagesRequest, tuple[ChatMessage, ...], SamplingParams]:
    """Decode and validate a Messages body and translate it for the node.

    ``system`` becomes a leading system message; ``metadata`` stays here.

    Raises:
        RequestError: 400 for invalid JSON or fields, a missing
            ``max_tokens``, empty ``messages``, non-text blocks, tools,
            ``top_k`` or extended thinking (not supported here).
    """
    req: MessagesRequest = decode_body(_decoder, body)
    _refuse_unsupported(req)
    check_sampling(temperature=req.temperature, top_p=req.top_p, max_temperature=1.0, max_tokens=req.max_tokens)
    _refuse_unsupported(req)
    messages, prefill = _chat(req)
    params = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=tuple(s for s in req.stop_sequences or () if s),
        continue_final=prefill,
    )
    return req, tuple(messages), params


EPOCH = "1970-01-01T00:00:00Z"
"""``created_at`` for every model: the network does not know when a model was released."""


def model_info(model_id: str) -> dict[str, Any]:
    """An Anthropic ``ModelInfo`` (``GET /v1/models`` from an Anthropic client)."""
    return {"type": "model", "id": model_id, "display_name": model_id, "created_at": EPOCH}


def model_page(model_ids: list[str]) -> dict[str, Any]:
    """Anthropic's page of models: everything in one page."""
    return {
        "data": [model_info(m) for m in model_ids],
        "has_more": False,
        "first_id": model_ids[0] if model_ids else None,
        "last_id": model_ids[-1] if model_ids else None,
    }


def wants_anthropic(headers: Any) -> bool:
    """The caller is an Anthropic client (its SDK always sends ``anthropic-version``): answer in its shapes."""
    return "anthropic-version" in headers


def message_object(
    message_id: str,
    model: str,
    text: str | None,
    stop_reason: str | None,
    input_tokens: int,
    output_tokens: int,
    stop_sequence: str | None = None,
) -> dict[str, Any]:
    """A ``message`` object: the whole answer (``text`` set) or the ``message_start`` shell (``text`` None)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def sse_event(kind: str, data: dict[str, Any]) -> bytes:
    """One Anthropic server-sent event: ``event:`` line naming the type, then the JSON data."""
    return b"event: " + kind.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def stream_opening(message_id: str, model: str) -> list[bytes]:
    """``message_start`` (usage 0/0: the node counts the prompt), ``content_block_start``, a ``ping``."""
    return [
        sse_event(
            "message_start", {"type": "message_start", "message": message_object(message_id, model, None, None, 0, 0)}
        ),
        sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        sse_event("ping", {"type": "ping"}),
    ]


def stream_delta(text: str) -> bytes:
    return sse_event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def stream_closing(
    stop_reason: str, input_tokens: int, output_tokens: int, stop_sequence: str | None = None
) -> list[bytes]:
    """``content_block_stop``, ``message_delta`` with the stop reason and final usage, ``message_stop``."""
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    return [
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason,
                    "stop_sequence": stop_sequence if stop_reason == "stop_sequence" else None,
                },
                "usage": usage,
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    ]


def stream_error(err: RequestError) -> bytes:
    """The one ``error`` event for a failure after the stream started."""
    return sse_event("error", error_body(err))
