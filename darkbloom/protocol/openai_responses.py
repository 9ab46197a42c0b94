"""OpenAI Responses API shapes (``POST /v1/responses``): request, response object, stream events.

The request translates to the same chat messages and sampling as a chat
completion; the response is a ``response`` object with one assistant
``message`` output item holding one ``output_text`` part. Streams follow the
documented sequence: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``..., ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then
``response.completed`` (or ``response.incomplete`` when the token limit cut
it short, ``response.failed`` on an error), each with a ``sequence_number``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from darkbloom.protocol.frames import ChatMessage, SamplingParams
from darkbloom.protocol.openai import DEFAULT_MAX_TOKENS, RequestError, check_sampling, decode_body

TEXT_PART_TYPES = ("input_text", "output_text", "text")


class InputPart(msgspec.Struct, frozen=True):
    type: str
    text: str | None = None


class InputItem(msgspec.Struct, frozen=True):
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[InputPart] | None = None
    type: str = "message"


class TextFormat(msgspec.Struct, frozen=True):
    type: str = "text"


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
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def _item_text(item: InputItem) -> str:
    if item.type != "message":
        raise RequestError(400, f"input item type {item.type!r} is not supported; only 'message'", param="input")
    if item.role is None:
        raise RequestError(400, "each input message needs a role", param="input")
    content = item.content
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for part in content:
        if part.type not in TEXT_PART_TYPES:
            raise RequestError(400, f"input content type {part.type!r} is not supported; only text", param="input")
        out.append(part.text or "")
    return "".join(out)


def parse_responses_request(body: bytes) -> tuple[ResponsesRequest, tuple[ChatMessage, ...], SamplingParams]:
    """Decode and validate a Responses body and translate it for the node.

    ``instructions`` becomes a leading system message; ``metadata`` and
    ``user`` stay on the coordinator.

    Raises:
        RequestError: 400 for invalid JSON or fields, empty input, tools,
            ``previous_response_id`` (nothing is stored), reasoning options or
            a structured text format.
    """
    req: ResponsesRequest = decode_body(_decoder, body)
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    check_sampling(temperature=req.temperature, top_p=req.top_p, max_output_tokens=req.max_output_tokens)
    if req.tools:
        raise RequestError(400, f"tools are not supported for model {req.model!r} on this network", param="tools")
    if req.previous_response_id:
        raise RequestError(
            400, "previous_response_id is not supported: responses are not stored", param="previous_response_id"
        )
    if req.reasoning:
        raise RequestError(400, "reasoning options are not supported by this network's models", param="reasoning")
    if req.text is not None and req.text.format.type not in ("text", "json_object"):
        raise RequestError(400, f"text.format type {req.text.format.type!r} is not supported", param="text")
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
        for item in req.input:
            role = "system" if item.role == "developer" else item.role
            messages.append(ChatMessage(role=role or "user", content=_item_text(item)))
    json_mode = req.text is not None and req.text.format.type == "json_object"
    params = SamplingParams(
        max_tokens=req.max_output_tokens or DEFAULT_MAX_TOKENS,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        response_format="json_object" if json_mode else None,
    )
    return req, tuple(messages), params


@dataclass
class ResponseState:
    """One response as it is built, and the stream events that describe it."""

    response_id: str
    message_id: str
    model: str
    created_at: int
    request: ResponsesRequest
    text: str = ""
    seq: int = 0
    status: str = "in_progress"
    usage: dict[str, Any] | None = None
    incomplete_reason: str | None = None
    error: dict[str, str] | None = None

    def _part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}

    def _item(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" and not self.text else [self._part()]
        return {"id": self.message_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def body(self) -> dict[str, Any]:
        """The ``response`` object in its current state."""
        req = self.request
        item_status = "completed" if self.status == "completed" else "incomplete"
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
            "output": [] if self.status in ("in_progress", "failed") else [self._item(item_status)],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": {"type": req.text.format.type if req.text else "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "usage": self.usage,
            "user": req.user,
            "metadata": req.metadata or {},
        }

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _at(self) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0}

    def opening(self) -> list[dict[str, Any]]:
        """The events before the first text delta."""
        return [
            self._event("response.created", response=self.body()),
            self._event("response.in_progress", response=self.body()),
            self._event("response.output_item.added", output_index=0, item=self._item("in_progress")),
            self._event(
                "response.content_part.added",
                **self._at(),
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            ),
        ]

    def delta(self, text: str) -> dict[str, Any]:
        """One ``response.output_text.delta`` event; the text is added to the response."""
        self.text += text
        return self._event("response.output_text.delta", **self._at(), delta=text, logprobs=[])

    def finish(self, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Record how the generation ended and its usage."""
        self.usage = response_usage(prompt_tokens, completion_tokens)
        if finish_reason == "length":
            self.status, self.incomplete_reason = "incomplete", "max_output_tokens"
        else:
            self.status = "completed"

    def closing(self) -> list[dict[str, Any]]:
        """The events after the last delta, ending in ``response.completed`` or ``response.incomplete``."""
        item_status = "completed" if self.status == "completed" else "incomplete"
        return [
            self._event("response.output_text.done", **self._at(), text=self.text, logprobs=[]),
            self._event("response.content_part.done", **self._at(), part=self._part()),
            self._event("response.output_item.done", output_index=0, item=self._item(item_status)),
            self._event(f"response.{self.status}", response=self.body()),
        ]

    def failed(self, code: str, message: str) -> dict[str, Any]:
        """The ``response.failed`` event for an error after the stream started."""
        self.status, self.error = "failed", {"code": code, "message": message}
        return self._event("response.failed", response=self.body())


def response_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }
