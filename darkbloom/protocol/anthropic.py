"""Anthropic Messages API shapes (``POST /v1/messages``): request, message, stream events, errors.

Requests translate to the same chat messages and sampling as every other
adapter. Errors are Anthropic's ``{"type": "error", "error": {"type",
"message"}}``; the adapter raises the shared ``RequestError`` and
``error_body`` renders it in this shape, mapping the status to Anthropic's
error type.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from darkbloom.protocol import structured
from darkbloom.protocol.frames import ChatMessage, SamplingParams, ToolCall
from darkbloom.protocol.openai import RequestError, check_sampling, decode_body, named_tool

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
    """A content block: ``text``; ``tool_use`` (an assistant's call) or ``tool_result`` (the caller's answer to one)."""

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: bool | None = None


class ToolParam(msgspec.Struct, frozen=True):
    """A tool the model may call: Anthropic's ``{name, description, input_schema}``."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None


class MessageParam(msgspec.Struct, frozen=True):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class OutputFormat(msgspec.Struct, frozen=True):
    """``output_config.format``: the JSON schema the answer must match."""

    type: str
    schema: dict[str, Any] | None = None


class OutputConfig(msgspec.Struct, frozen=True):
    """``output_config``: ``format`` is enforced; ``effort`` (for reasoning models) changes nothing here."""

    format: OutputFormat | None = None
    effort: str | None = None


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
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None
    """The structured-outputs beta's spelling of ``output_config.format``."""


_decoder = msgspec.json.Decoder(MessagesRequest)


def output_format(req: MessagesRequest, prefill: bool) -> tuple[str | None, str | None]:
    """Structured output (``output_config.format``, or the beta's ``output_format``) as the node's
    ``response_format`` and ``json_schema``.

    Raises:
        RequestError: 400 naming the field: a type other than ``json_schema``,
            no schema, a malformed or too large one, beside tools the model may
            call, or with a prefill (as on Anthropic's API).
    """
    fmt, param = (req.output_config.format, "output_config.format") if req.output_config else (None, "")
    if fmt is None:
        fmt, param = req.output_format, "output_format"
    if fmt is None:
        return None, None
    if fmt.type != "json_schema":
        raise RequestError(400, f"{param}.type: {fmt.type!r} is not supported; only 'json_schema'", param=param)
    if fmt.schema is None:
        raise RequestError(400, f"{param}.schema: a JSON schema is required", param=param)
    structured.check_schema_shape(fmt.schema, param)
    if req.tools and (req.tool_choice or {}).get("type") != "none":
        raise RequestError(
            400, f"{param}: structured output cannot be combined with tools the model may call", param=param
        )
    if prefill:
        raise RequestError(400, f"{param}: a prefilled assistant message cannot be combined with it", param=param)
    return structured.node_format("json_schema", fmt.schema)


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
    for name in ("thinking", "top_k"):
        if getattr(req, name, None) is not None:
            raise RequestError(400, f"{name}: not supported for model {req.model!r} on this network", param=name)
    choice = (req.tool_choice or {}).get("type", "auto")
    if choice not in ("auto", "none", "any", "tool"):
        raise RequestError(
            400, f"tool_choice: {choice!r} is not supported; use 'auto', 'none', 'any' or 'tool'", param="tool_choice"
        )
    if req.tool_choice is not None and not req.tools:
        raise RequestError(400, "tool_choice: only allowed when tools are given", param="tool_choice")
    if not isinstance((req.tool_choice or {}).get("disable_parallel_tool_use", False), bool):
        raise RequestError(400, "tool_choice.disable_parallel_tool_use: must be a boolean", param="tool_choice")


def tools_json(req: MessagesRequest | CountTokensRequest) -> str | None:
    """The tools as the OpenAI ``tools`` JSON the node's chat template renders (none for ``tool_choice`` none).

    Raises:
        RequestError: 400 for a tool without a ``name`` or an ``input_schema`` object.
    """
    if not req.tools or (req.tool_choice or {}).get("type") == "none":
        return None
    try:
        tools = msgspec.convert(req.tools, list[ToolParam])
    except msgspec.ValidationError as exc:
        raise RequestError(400, f"tools: {exc}", param="tools") from None
    return json.dumps(
        [
            {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}}
            for t in tools
        ],
        ensure_ascii=False,
    )


def _turn(role: str, content: str | list[ContentBlock], param: str) -> list[ChatMessage]:
    """One Anthropic message as chat messages: a user turn's ``tool_result`` blocks become ``tool`` messages
    (first, as Anthropic orders them), an assistant's ``tool_use`` blocks its ``tool_calls``."""
    if isinstance(content, str):
        return [ChatMessage(role=role, content=content)]
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[ChatMessage] = []
    for j, block in enumerate(content):
        if block.type == "text":
            texts.append(block.text or "")
        elif block.type == "tool_use" and role == "assistant" and block.id and block.name:
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input if block.input is not None else {})))
        elif block.type == "tool_result" and role == "user" and block.tool_use_id:
            body = block.content
            if not isinstance(body, str) and any(b.get("type") != "text" for b in body or ()):
                raise RequestError(400, f"{param}.{j}.content: only text is supported in a tool_result", param=param)
            text = body if isinstance(body, str) else "".join(str(b.get("text", "")) for b in body or ())
            if block.is_error:  # chat templates have no field for it: the model reads it in the result
                text = f"Error: {text}" if text else "Error"
            results.append(ChatMessage(role="tool", content=text, tool_call_id=block.tool_use_id))
        else:
            raise RequestError(
                400,
                f"{param}.{j}: content block type {block.type!r} is not supported here; "
                "only 'text', an assistant's 'tool_use' and a user's 'tool_result' (with their ids)",
                param=param,
            )
    out = results
    if texts or calls or not results:
        out = [*results, ChatMessage(role=role, content="".join(texts), tool_calls=tuple(calls))]
    return out


def _chat(req: MessagesRequest | CountTokensRequest) -> tuple[list[ChatMessage], bool]:
    """The conversation as chat messages (``system`` first), and whether its final message is a prefill."""
    messages = []
    if req.system:
        messages.append(ChatMessage(role="system", content=_text(req.system, "system")))
    for i, m in enumerate(req.messages):
        messages += _turn(m.role, m.content, f"messages.{i}.content")
    # A final assistant message is the start of the answer (prefill): the model continues it, and the
    # response holds only what it adds. An empty one asks for nothing; Anthropic refuses trailing whitespace.
    prefill = messages[-1].role == "assistant" and not messages[-1].tool_calls
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
    params = SamplingParams(max_tokens=1, temperature=0.0, continue_final=prefill, count_only=True, tools=tools_json(req))
    return req, tuple(messages), params


def parse_messages_request(body: bytes) -> tuple[MessagesRequest, tuple[ChatMessage, ...], SamplingParams]:
    """Decode and validate a Messages body and translate it for the node.

    ``system`` becomes a leading system message; ``metadata`` stays here.

    Raises:
        RequestError: 400 for invalid JSON or fields, a missing
            ``max_tokens``, empty ``messages``, blocks other than text and
            tool use/results, a ``tool_choice`` naming no tool, ``top_k`` or extended
            thinking (not supported here).
    """
    req: MessagesRequest = decode_body(_decoder, body)
    _refuse_unsupported(req)
    check_sampling(temperature=req.temperature, top_p=req.top_p, max_temperature=1.0, max_tokens=req.max_tokens)
    messages, prefill = _chat(req)
    forced, tool_name = forced_tool(req)
    response_format, json_schema = output_format(req, prefill)
    params = SamplingParams(
        max_tokens=req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=tuple(s for s in req.stop_sequences or () if s),
        continue_final=prefill,
        tools=tools_json(req),
        response_format=response_format,
        json_schema=json_schema,
        tool_required=forced,
        tool_name=tool_name,
        parallel_tool_calls=not (req.tool_choice or {}).get("disable_parallel_tool_use", False),
    )
    return req, tuple(messages), params


def forced_tool(req: MessagesRequest) -> tuple[bool, str | None]:
    """``tool_choice`` ``any`` (some tool) or ``tool`` (the one named) force a call; returns (forced, name).

    Raises:
        RequestError: 400 naming ``tool_choice`` for a ``tool`` whose name is not one of the tools.
    """
    choice = req.tool_choice or {}
    if choice.get("type") == "any":
        return True, None
    if choice.get("type") == "tool":
        names = [t.get("name") for t in req.tools or () if isinstance(t, dict) and isinstance(t.get("name"), str)]
        return True, named_tool(choice.get("name"), names)  # type: ignore[arg-type]
    return False, None


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
    tool_calls: list[ToolCall] | tuple[ToolCall, ...] = (),
) -> dict[str, Any]:
    """A ``message`` object: the whole answer (``text`` set) or the ``message_start`` shell (``text`` None).

    The model's tool calls follow its text as ``tool_use`` blocks (a text block only if there is text, or nothing else).
    """
    content: list[dict[str, Any]] = []
    if text is not None and (text or not tool_calls):
        content.append({"type": "text", "text": text})
    content += [tool_use_block(call) for call in tool_calls]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def tool_use_block(call: ToolCall, *, streamed: bool = False) -> dict[str, Any]:
    """A ``tool_use`` content block; streamed, its ``input`` starts empty and arrives as ``input_json_delta``."""
    if streamed:
        return {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = {"arguments": call.arguments}  # the model wrote something that is not JSON: keep it visible
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": arguments}


def stream_tool_use(index: int, call: ToolCall) -> list[bytes]:
    """One tool call as its own content block: start, its input as one ``input_json_delta``, stop."""
    return [
        sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": tool_use_block(call, streamed=True)}),
        sse_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": call.arguments}},
        ),
        stream_block_stop(index),
    ]


def stream_block_stop(index: int) -> bytes:
    return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})


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


def stream_delta(text: str, index: int = 0) -> bytes:
    return sse_event(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
    )


def stream_text_start(index: int) -> bytes:
    """A text block opened after a tool call (the first one opens with ``stream_opening``)."""
    return sse_event(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    )


def stream_closing(
    stop_reason: str, input_tokens: int, output_tokens: int, stop_sequence: str | None = None, *, open_block: int | None = 0
) -> list[bytes]:
    """``content_block_stop`` for the block still open (if any), ``message_delta`` with the stop reason
    and final usage, ``message_stop``."""
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    return [
        *([stream_block_stop(open_block)] if open_block is not None else []),
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
