"""``POST /v1/responses``: the OpenAI Responses adapter over the gateway.

Streams carry ``event:`` lines and end with ``response.completed``,
``response.incomplete`` or ``response.failed``; there is no ``[DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol import Chunk, Complete, Error, TokenLogprob, ToolCall
from darkbloom.protocol.openai import logprob_entries
from darkbloom.protocol.openai_responses import ResponseState, parse_responses_request
from darkbloom.server import gateway
from darkbloom.server.api.adapter import (
    check_features,
    check_fleet_limits,
    collect,
    dispatch,
    handle,
    json_response,
    new_job,
    stream_response,
)
from darkbloom.server.api.errors import error_response
from darkbloom.server.store import ApiKeyRecord

_encode = msgspec.json.Encoder().encode  # ~10x json.dumps; runs once per streamed chunk


def _event(obj: dict[str, Any]) -> bytes:
    return f"event: {obj['type']}\ndata: ".encode() + _encode(obj) + b"\n\n"


async def responses(request: Request) -> Response:
    return await handle(request, _responses, error_response)


async def _responses(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    req, messages, params = parse_responses_request(body)
    await check_features(request, req.model, params, "text.format")
    with_logprobs = params.top_logprobs is not None
    check_fleet_limits(request, req.model, params.max_tokens, "max_output_tokens")
    timing.parsed = time.perf_counter()
    job = new_job(consumer, "resp_", "responses", req.model, messages, params, req.stream)
    relay = await dispatch(request, job, timing)
    state = ResponseState(job.request_id, f"msg_{uuid.uuid4().hex}", job.model, int(time.time()), req)
    if not req.stream:
        calls: list[ToolCall] = []
        entries: list[TokenLogprob] | None = [] if with_logprobs else None
        text, done = await collect(request, relay, calls, entries)
        if text:
            state.add_text(text, logprob_entries(entries) if entries is not None else None)
        for call in calls:
            state.add_call(call)
        state.finish(done.finish_reason, done.usage)
        return json_response(state.body(), relay)

    async def events() -> AsyncIterator[bytes]:
        for event in state.opening():
            yield _event(event)
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                if frame.text or (with_logprobs and frame.logprobs):
                    lp = logprob_entries(frame.logprobs) if with_logprobs else None
                    for event in state.add_text(frame.text, lp):
                        yield _event(event)
                for call in frame.tool_calls:
                    for event in state.add_call(call):
                        yield _event(event)
            elif isinstance(frame, Complete):
                state.finish(frame.finish_reason, frame.usage)
                for event in state.closing():
                    yield _event(event)
            elif isinstance(frame, Error):
                err = gateway.frame_error(frame)
                yield _event(state.failed(err.code or "server_error", err.message))

    return stream_response(relay, events(), lambda err: _event(state.failed(err.code or "server_error", err.message)))
