"""OpenAI-compatible consumer shapes: chat request, response, stream chunk, error.

Requests are decoded with msgspec into typed structs; anything the schema does
not accept becomes a ``RequestError`` carrying the OpenAI error fields, so the
HTTP layer turns it into ``{"error": {...}}`` without guessing.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec

from darkbloom.protocol import structured
from darkbloom.protocol.frames import ChatMessage, SamplingParams, TokenLogprob, ToolCall, Usage


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


class FunctionCall(msgspec.Struct, frozen=True):
    name: str
    arguments: str = "{}"


class MessageToolCall(msgspec.Struct, frozen=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class FunctionSpec(msgspec.Struct, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(msgspec.Struct, frozen=True):
    function: FunctionSpec
    type: Literal["function"] = "function"


class Message(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[MessageToolCall] | None = None


class JsonSchemaFormat(msgspec.Struct, frozen=True):
    """``response_format.json_schema``: the schema the answer must match (``strict`` is always so here)."""

    name: str
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, frozen=True):
    type: str
    json_schema: JsonSchemaFormat | None = None


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
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    """Kept as sent (key order included) so the node renders exactly what the caller wrote; checked against ``ToolSpec``."""
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    continue_final_message: bool = False
    """vLLM's extension: continue the final assistant message instead of starting a new one."""


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


def decode_body(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """Decode a JSON request body with ``decoder``; every failure is a 400 that says why.

    Raises:
        RequestError: 400 for an empty body, invalid JSON (or not UTF-8), or a field the
            schema refuses (``param`` names the top-level field).
    """
    if not body.strip():
        raise RequestError(400, "request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        param = msg.rsplit("`$.", 1)[-1].rstrip("`").split(".")[0].split("[")[0] if "`$." in msg else None
        if param is None and "missing required field `" in msg:  # a top-level field: name it
            param = msg.split("`")[1]
        raise RequestError(400, f"invalid request: {msg}", param=param) from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"invalid JSON body: {exc}") from None
    except UnicodeDecodeError:  # msgspec decodes strings lazily: bad bytes inside one surface here
        raise RequestError(400, NOT_UTF8) from None


NOT_UTF8 = "invalid JSON body: a string in it is not valid UTF-8 (JSON text must be UTF-8)"


def check_sampling(
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    max_temperature: float = 2.0,
    **penalties_and_limits: float | None,
) -> None:
    """Range checks shared by the OpenAI and Anthropic adapters.

    ``penalties_and_limits`` takes ``*_penalty`` values (-2..2) and
    ``max_*tokens`` values (>= 1) by their wire names, so errors name them.

    Raises:
        RequestError: 400 naming the first out-of-range parameter.
    """
    if temperature is not None and not 0 <= temperature <= max_temperature:
        raise RequestError(400, f"temperature must be between 0 and {max_temperature:g}", param="temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(400, "top_p must be in (0, 1]", param="top_p")
    for name, value in penalties_and_limits.items():
        if value is None:
            continue
        if name.endswith("_penalty") and not -2 <= value <= 2:
            raise RequestError(400, f"{name} must be between -2 and 2", param=name)
        if name.endswith("tokens") and value < 1:
            raise RequestError(400, f"{name} must be a positive integer", param=name)


def require_single_choice(n: int | None) -> None:
    if n is not None and n != 1:
        raise RequestError(
            400, f"n={n} is not supported: only n=1 (send separate requests for more choices)", param="n"
        )


def check_stream_options(stream: bool, options: StreamOptions | None) -> None:
    if options is not None and not stream:
        raise RequestError(400, "stream_options is only allowed when stream is true", param="stream_options")


def check_tool_choice(tool_choice: str | dict[str, Any] | None, tools: list[Any] | None) -> tuple[bool, str | None]:
    """``tool_choice`` as chat and responses take it, only beside tools.

    ``auto`` and ``none``; ``required`` (the answer is one or more calls);
    a named function, as chat (``{"type": "function", "function": {"name"}}``)
    or the Responses API (``{"type": "function", "name"}``) spell it.

    Returns:
        Whether a call is forced, and the one function it must call (if named).

    Raises:
        RequestError: 400 naming ``tool_choice``: without tools, another
            value, or a name that is not one of ``tools``.
    """
    if tool_choice not in (None, "none") and not tools:
        raise RequestError(400, "tool_choice is only allowed when tools are specified", param="tool_choice")
    if tool_choice in (None, "none", "auto"):
        return False, None
    if tool_choice == "required":
        return True, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        inner = tool_choice.get("function")
        name = inner.get("name") if isinstance(inner, dict) else tool_choice.get("name")
        return True, named_tool(name, tool_names(tools or []))
    raise RequestError(
        400,
        f"tool_choice {tool_choice!r} is not supported: use 'auto', 'none', 'required' or a named function",
        param="tool_choice",
    )


def tool_names(tools: list[Any]) -> list[str]:
    """The function names of chat (``{"function": {"name"}}``) or flat (``{"name"}``) tools."""
    out = []
    for t in tools:
        spec = t.get("function", t) if isinstance(t, dict) else {}
        out.append(spec.get("name") if isinstance(spec, dict) else None)
    return [n for n in out if isinstance(n, str)]


def named_tool(name: Any, names: list[str]) -> str:
    """A forced call's function name, checked against the request's tools.

    Raises:
        RequestError: 400 naming ``tool_choice``.
    """
    if not isinstance(name, str) or name not in names:
        raise RequestError(
            400, f"tool_choice names the function {name!r}, which is not one of the tools given: {names}", param="tool_choice"
        )
    return name


def check_json_with_tools(tools: list[Any] | None, tool_choice: Any, param: str) -> None:
    """JSON output and tools the model may call do not mix: the grammar leaves no room for a call.

    Raises:
        RequestError: 400 naming ``param`` when tools are given and not turned off.
    """
    if tools and tool_choice != "none":
        raise RequestError(
            400,
            f"{param} (JSON output) cannot be combined with tools the model may call; "
            "send tool_choice 'none' or leave one of them out",
            param=param,
        )


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    """Decode and validate a chat completion body.

    Raises:
        RequestError: 400 for empty or invalid JSON, a missing or empty
            ``model`` or ``messages``, ``n`` > 1, a bad ``max_tokens``, a
            sampling value out of range, or an unsupported option.
    """
    req: ChatCompletionRequest = decode_body(_chat_decoder, body)
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    if not req.messages:
        raise RequestError(400, "messages must be a non-empty array", param="messages")
    require_single_choice(req.n)
    check_stream_options(req.stream, req.stream_options)
    check_sampling(
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens,
        max_completion_tokens=req.max_completion_tokens,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
    )
    if req.top_logprobs is not None:
        if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
        if not req.logprobs:
            raise RequestError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if req.tools:
        try:
            msgspec.convert(req.tools, list[ToolSpec])
        except msgspec.ValidationError as exc:
            raise RequestError(400, f"invalid tools: {exc}", param="tools") from None
    check_tool_choice(req.tool_choice, req.tools)
    if req.continue_final_message:
        last = req.messages[-1]
        if last.role != "assistant" or not _text_of(last.content) or last.tool_calls:
            raise RequestError(
                400,
                "continue_final_message needs the last message to be an assistant message with text to continue",
                param="continue_final_message",
            )
    fmt = req.response_format
    if fmt is not None:
        spec = fmt.json_schema
        structured.check_format(fmt.type, spec and spec.name, spec and spec.schema, "response_format")
        if fmt.type != "text":
            check_json_with_tools(req.tools, req.tool_choice, "response_format")
        if fmt.type == "json_object" and not any("json" in _text_of(m.content).lower() for m in req.messages):
            # OpenAI's own rule: without the word the model may emit whitespace until max_tokens.
            raise RequestError(
                400,
                "'messages' must contain the word 'json' in some form to use 'response_format' of type 'json_object'",
                param="messages",
            )
    return req


def _text_of(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, list):
        return "".join(p.text or "" for p in content)
    return content or ""


def node_seed(seed: int | None) -> int | None:
    """OpenAI seeds are any 64-bit integer; the node's PRNG takes an unsigned one."""
    return None if seed is None else seed % 2**64


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
            tool_calls=tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()),
        )
        for m in req.messages
    )
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    forced, tool_name = check_tool_choice(req.tool_choice, req.tools)
    fmt, schema = None, None
    if req.response_format is not None:
        spec = req.response_format.json_schema
        fmt, schema = structured.node_format(req.response_format.type, spec and spec.schema)
    params = SamplingParams(
        max_tokens=req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=node_seed(req.seed),
        stop=stop,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        response_format=fmt,
        json_schema=schema,
        tools=tools_json(req),
        continue_final=req.continue_final_message,
        top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        tool_required=forced,
        tool_name=tool_name,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )
    return messages, params


MAX_TOP_LOGPROBS = 20
"""OpenAI's limit for ``top_logprobs``."""


def logprob_entries(logprobs: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI ``logprobs.content`` entries: each token with its bytes and its ``top_logprobs``."""
    return [
        {
            "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
            "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": a.bytes} for a in t.top],
        }
        for t in logprobs
    ]  # fmt: skip


def tools_json(req: ChatCompletionRequest) -> str | None:
    """The tools the node should render into the prompt, as JSON text (none for ``tool_choice`` "none")."""
    if not req.tools or req.tool_choice == "none":
        return None
    return json.dumps(req.tools, ensure_ascii=False)


def tool_call_dicts(calls: tuple[ToolCall, ...] | list[ToolCall], start: int = 0, *, indexed: bool = False) -> list[dict[str, Any]]:
    """OpenAI ``tool_calls`` entries; stream deltas carry an ``index`` as well."""
    out = []
    for i, call in enumerate(calls, start):
        entry: dict[str, Any] = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        if indexed:
            entry = {"index": i, **entry}
        out.append(entry)
    return out


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI ``usage`` for a node's report (``cached_tokens``: the prompt's tokens found in its prompt cache)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
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
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` object for a stream (``logprobs``: its ``logprobs.content`` entries)."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if empty_choices
        else [{"index": 0, "delta": delta, "logprobs": _logprobs(logprobs), "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def chat_completion(
    completion_id: str,
    model: str,
    created: int,
    content: str,
    finish_reason: str,
    usage: dict[str, int],
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A whole ``chat.completion`` object for a non-streaming answer (``logprobs``: as in ``chat_chunk``)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message = {"role": "assistant", "content": content or None, "tool_calls": tool_calls}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": _logprobs(logprobs),
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
    }


def _logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return None if entries is None else {"content": entries, "refusal": None}
