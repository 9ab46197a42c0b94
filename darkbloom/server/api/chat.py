"""``POST /v1/chat/completions``: the OpenAI chat adapter over the gateway."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol import Chunk, Complete, Error
from darkbloom.protocol.openai import (
    RequestError,
    chat_chunk,
    chat_completion,
    parse_chat_request,
    to_internal,
    usage_dict,
)
from darkbloom.server import gateway
from darkbloom.server.api.adapter import (
    check_fleet_limits,
    collect,
    dispatch,
    handle,
    json_response,
    sse,
    stream_response,
)
from darkbloom.server.api.errors import error_response
from darkbloom.server.store import ApiKeyRecord


async def chat_completions(request: Request) -> Response:
    return await handle(request, _chat_completions, error_response)


async def _chat_completions(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    req = parse_chat_request(body)
    messages, params = to_internal(req)
    if req.tools:
        # No node advertises a tool-capable template yet, so tools can never be honoured here.
        raise RequestError(
            400,
            f"model {req.model!r} does not support tools: its chat template has no tool support on this network",
            param="tools",
        )
    check_fleet_limits(
        request, req.model, params.max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    )
    timing.parsed = time.perf_counter()
    job = gateway.InferenceJob(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=req.model,
        messages=messages,
        params=params,
        account_id=consumer.account_id,
        api="chat.completions",
        stream=req.stream,
    )
    relay = await dispatch(request, job, timing)
    created = int(time.time())
    if not req.stream:
        text, done = await collect(request, relay)
        usage = usage_dict(done.usage.prompt_tokens, done.usage.completion_tokens)
        return json_response(
            chat_completion(job.request_id, job.model, created, text, done.finish_reason, usage), relay
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[bytes]:
        role_sent = False
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                yield sse(
                    chat_chunk(
                        job.request_id, job.model, created, content=frame.text, role=None if role_sent else "assistant"
                    )
                )
                role_sent = True
            elif isinstance(frame, Complete):
                if not role_sent:
                    yield sse(chat_chunk(job.request_id, job.model, created, content="", role="assistant"))
                yield sse(chat_chunk(job.request_id, job.model, created, finish_reason=frame.finish_reason))
                if include_usage:
                    usage = usage_dict(frame.usage.prompt_tokens, frame.usage.completion_tokens)
                    yield sse(chat_chunk(job.request_id, job.model, created, usage=usage, empty_choices=True))
                yield b"data: [DONE]\n\n"
            elif isinstance(frame, Error):
                yield sse(gateway.frame_error(frame).body())

    return stream_response(relay, events(), lambda err: sse(err.body()))
