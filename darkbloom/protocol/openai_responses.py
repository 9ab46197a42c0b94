"""OpenAI Responses API shapes (``POST /v1/responses``): request, response object, stream events.

The request translates to the same chat messages and sampling as a chat
completion (function ``tools`` to the chat tools the node's template renders;
``function_call`` and ``function_call_output`` input items to the assistant's
calls and ``tool`` messages). The response is a ``response`` object whose
output is an assistant ``message`` item holding one ``output_text`` part,
followed by a ``function_call`` item per tool call. Streams follow the
documented sequence: ``response.created``, ``response.in_progress``, then per
item ``response.output_item.added``, its content (``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``; or ``response.function_call_arguments.delta``
and ``.done``), ``response.output_item.done``; then ``response.completed``
(or ``response.incomplete`` when the token limit cut it short,
``response.failed`` on an error), each with a ``sequence_number``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from darkbloom.protocol.frames import ChatMessage, SamplingParams, ToolCall, Usage
from darkbloom.protocol import structured
from darkbloom.protocol.openai import (
    DEFAULT_MAX_TOKENS,
    MAX_TOP_LOGPROBS,
    RequestError,
    check_json_with_tools,
    check_sampling,
    check_tool_choice,
    decode_body,
)

TEXT_PART_TYPES = ("input_text", "output_text", "text")


class InputPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class InputItem(msgspec.Struct, frozen=True):
    """A message, or one of a tool turn's items: ``function_call`` (the model's) and ``function_call_output``."""

    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[InputPart] | None = None
    type: str = "message"
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None


class FunctionTool(msgspec.Struct, frozen=True):
    """A Responses ``tools`` entry (flat, unlike chat's ``{"function": {...}}``)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct, frozen=True):
    """``text.format``: ``text``, ``json_object``, or ``json_schema`` with its ``name`` and ``schema`` (flat)."""

    type: str = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None

    def echo(self) -> dict[str, Any]:
        """The format as the response object repeats it."""
        if self.type != "json_schema":
            return {"type": self.type}
        return {
            "type": self.type, "name": self.name, "description": self.description,
            "schema": self.schema or {}, "strict": bool(self.strict),
        }


class TextConfig(msgspec.Struct, frozen=True):
    format: TextFormat = TextFormat()


class ResponsesRequest(msgspec.Struct, frozen=True):
    """``POST /v1/responses`` body. Unknown fields are ignored, as OpenAI does."""

    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    text: TextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = None
    include: list[str] | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def _text(content: str | list[InputPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for part in content:
        if part.type not in TEXT_PART_TYPES:
            raise RequestError(400, f"input content type {part.type!r} is not supported; only text", param="input")
        out.append(part.text or "")
    return "".join(out)


def _input_messages(items: list[InputItem]) -> list[ChatMessage]:
    """Input items as chat messages: a ``function_call`` joins the assistant turn before it (or opens
    one), a ``function_call_output`` is a ``tool`` message answering its ``call_id``."""
    out: list[ChatMessage] = []
    for i, item in enumerate(items):
        if item.type == "message":
            if item.role is None:
                raise RequestError(400, "each input message needs a role", param="input")
            out.append(ChatMessage(role="system" if item.role == "developer" else item.role, content=_text(item.content)))
        elif item.type == "function_call":
            if not item.call_id or not item.name:
                raise RequestError(400, f"input[{i}]: a function_call needs its call_id and name", param="input")
            call = ToolCall(item.call_id, item.name, item.arguments or "{}")
            if out and out[-1].role == "assistant":
                out[-1] = msgspec.structs.replace(out[-1], tool_calls=(*out[-1].tool_calls, call))
            else:
                out.append(ChatMessage(role="assistant", tool_calls=(call,)))
        elif item.type == "function_call_output":
            if not item.call_id:
                raise RequestError(400, f"input[{i}]: a function_call_output needs the call_id it answers", param="input")
            out.append(ChatMessage(role="tool", content=_text(item.output), tool_call_id=item.call_id))
        else:
            raise RequestError(
                400,
                f"input item type {item.type!r} is not supported; only 'message', 'function_call' and 'function_call_output'",
                param="input",
            )
    return out


def _tools_json(req: ResponsesRequest) -> str | None:
    """The function tools in the chat shape the node's template renders (none for ``tool_choice`` none).

    Raises:
        RequestError: 400 for a tool that is not a well-formed function.
    """
    chat_tools = []
    for i, raw in enumerate(req.tools or ()):
        try:
            tool = msgspec.convert(raw, FunctionTool)
        except msgspec.ValidationError as exc:
            raise RequestError(400, f"invalid tools[{i}]: {exc}", param="tools") from None
        if tool.type != "function":
            raise RequestError(400, f"tools[{i}]: tool type {tool.type!r} is not supported; only 'function'", param="tools")
        if not tool.name:
            raise RequestError(400, f"tools[{i}]: a function tool needs a name", param="tools")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        if tool.parameters is not None:
            function["parameters"] = tool.parameters
        chat_tools.append({"type": "function", "function": function})
    if not chat_tools or req.tool_choice == "none":
        return None
    return json.dumps(chat_tools, ensure_ascii=False)


def parse_responses_request(body: bytes) -> tuple[ResponsesRequest, tuple[ChatMessage, ...], SamplingParams]:
    """Decode and validate a Responses body and translate it for the node.

    ``instructions`` becomes a leading system message; ``metadata`` and
    ``user`` stay on the coordinator.

    Raises:
        RequestError: 400 for invalid JSON or fields, empty input, tools other
            than functions, a bad ``tool_choice``, ``previous_response_id``
            (nothing is stored), reasoning options, an unknown ``text.format``
            or a schema no node can enforce.
    """
    req: ResponsesRequest = decode_body(_decoder, body)
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    check_sampling(temperature=req.temperature, top_p=req.top_p, max_output_tokens=req.max_output_tokens)
    forced, tool_name = check_tool_choice(req.tool_choice, req.tools)
    tools = _tools_json(req)
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise RequestError(400, f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
    if req.previous_response_id:
        raise RequestError(
            400, "previous_response_id is not supported: responses are not stored", param="previous_response_id"
        )
    if req.reasoning:
        raise RequestError(400, "reasoning options are not supported by this network's models", param="reasoning")
    fmt = req.text.format if req.text is not None else TextFormat()
    structured.check_format(fmt.type, fmt.name, fmt.schema, "text.format")
    if fmt.type != "text":
        check_json_with_tools(req.tools, req.tool_choice, "text.format")
    messages: list[ChatMessage] = []
    if req.instructions:
        messages.append(ChatMessage(role="system", content=req.instructions))
    if isinstance(req.input, str):
        if not req.input:
            raise RequestError(400, "input must be a non-empty string or list of items", param="input")
        messages.append(ChatMessage(role="user", content=req.input))
    else:
        if not req.input:
            raise RequestError(400, "input must be a non-empty string or list of items", param="input")
        messages += _input_messages(req.input)
    response_format, json_schema = structured.node_format(fmt.type, fmt.schema)
    params = SamplingParams(
        max_tokens=req.max_output_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        response_format=response_format,
        json_schema=json_schema,
        tools=tools,
        top_logprobs=(req.top_logprobs or 0) if wants_logprobs(req) else None,
        tool_required=forced,
        tool_name=tool_name,
        parallel_tool_calls=req.parallel_tool_calls is not False,
    )
    return req, tuple(messages), params


def wants_logprobs(req: ResponsesRequest) -> bool:
    """``include`` asks for the output text's log probabilities (other ``include`` values name output this
    network never produces, such as reasoning or tool results, so they add nothing)."""
    return LOGPROBS_INCLUDE in (req.include or ())


LOGPROBS_INCLUDE = "message.output_text.logprobs"


@dataclass
class ResponseState:
    """One response as it is built, and the stream events that describe it.

    Its output is a list of items in the order they opened: an assistant
    ``message`` (opened by the first text, and again by text that follows a
    call) and a ``function_call`` for each tool call the model made. Each
    item is added, filled and done before the next one is added.
    """

    response_id: str
    message_id: str
    model: str
    created_at: int
    request: ResponsesRequest
    seq: int = 0
    status: str = "in_progress"
    usage: dict[str, Any] | None = None
    incomplete_reason: str | None = None
    error: dict[str, str] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    _open: dict[str, Any] | None = None  # the message item taking text deltas now

    def _message(self) -> dict[str, Any]:
        item_id = self.message_id if not self.items else f"msg_{os.urandom(16).hex()}"
        return {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}

    def body(self) -> dict[str, Any]:
        """The ``response`` object in its current state."""
        req = self.request
        output = [] if self.status in ("in_progress", "failed") else self.items
        if self.status not in ("in_progress", "failed") and not output:  # nothing generated: one empty message
            output = [{**self._message(), "status": self._item_status(), "content": [_text_part("")]}]
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "error": self.error,
            "incomplete_details": {"reason": self.incomplete_reason} if self.incomplete_reason else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": (req.text.format if req.text else TextFormat()).echo()},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": req.tools or [],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "top_logprobs": req.top_logprobs or 0,
            "truncation": "disabled",
            "usage": self.usage,
            "user": req.user,
            "metadata": req.metadata or {},
        }

    def _item_status(self) -> str:
        return "incomplete" if self.incomplete_reason else "completed"

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        """The events before any output."""
        return [self._event("response.created", response=self.body()), self._event("response.in_progress", response=self.body())]

    def _open_message(self) -> list[dict[str, Any]]:
        item = self._open = self._message()
        self.items.append(item)
        added = self._event("response.output_item.added", output_index=len(self.items) - 1, item=_copy(item))
        item["content"].append(_text_part(""))
        return [added, self._event("response.content_part.added", **self._at(), part=_text_part(""))]

    def add_text(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """Text the model wrote: into the open message item (opening one first if need be), with its events.

        ``logprobs``: its tokens' entries (``include`` asked for them); tokens
        that wrote no text join an open message's, and otherwise (a tool
        call's) are left out, as they belong to no output text.
        """
        if not text and not (logprobs and self._open is not None):
            return []
        events = self._open_message() if self._open is None else []
        assert self._open is not None
        part = self._open["content"][0]
        part["text"] += text
        part["logprobs"] += logprobs or []
        events.append(self._event("response.output_text.delta", **self._at(), delta=text, logprobs=logprobs or []))
        return events

    def _at(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items) - 1, "content_index": 0}

    def _close_message(self, status: str) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        part = item["content"][0]
        events = [
            self._event("response.output_text.done", **self._at(), text=part["text"], logprobs=part["logprobs"]),
            self._event("response.content_part.done", **self._at(), part=_copy(part)),
        ]
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=len(self.items) - 1, item=_copy(item)))
        self._open = None
        return events

    def add_call(self, call: ToolCall) -> list[dict[str, Any]]:
        """A tool call the model made, as a ``function_call`` item, with its events (after closing any open text)."""
        events = self._close_message("completed")
        item = {"id": f"fc_{os.urandom(16).hex()}", "type": "function_call", "status": "in_progress",
                "arguments": "", "call_id": call.id, "name": call.name}  # fmt: skip
        self.items.append(item)
        index = len(self.items) - 1
        events.append(self._event("response.output_item.added", output_index=index, item=_copy(item)))
        at = {"item_id": item["id"], "output_index": index}
        events.append(self._event("response.function_call_arguments.delta", **at, delta=call.arguments))
        item["arguments"], item["status"] = call.arguments, "completed"
        events.append(self._event("response.function_call_arguments.done", **at, arguments=call.arguments))
        events.append(self._event("response.output_item.done", output_index=index, item=_copy(item)))
        return events

    def finish(self, finish_reason: str, usage: Usage) -> None:
        """Record how the generation ended and its usage (as the node reported it)."""
        self.usage = response_usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        if finish_reason == "length":
            self.status, self.incomplete_reason = "incomplete", "max_output_tokens"
        else:
            self.status = "completed"
        if self._open is not None:
            self._open["status"] = self._item_status()

    def closing(self) -> list[dict[str, Any]]:
        """The events after the last output, ending in ``response.completed`` or ``response.incomplete``."""
        events = self._close_message(self._item_status())
        if not self.items:  # nothing generated at all: the one empty message a client expects
            events += self._open_message()
            events += self._close_message(self._item_status())
        return [*events, self._event(f"response.{self.status}", response=self.body())]

    def failed(self, code: str, message: str) -> dict[str, Any]:
        """The ``response.failed`` event for an error after the stream started."""
        self.status, self.error = "failed", {"code": code, "message": message}
        return self._event("response.failed", response=self.body())


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A snapshot for an event: the item goes on changing after it is announced."""
    return msgspec.json.decode(msgspec.json.encode(obj))  # type: ignore[no-any-return]


def response_usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }
