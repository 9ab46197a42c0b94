"""``POST /v1/chat/completions``: the OpenAI chat adapter over the gateway."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from darkbloom.protocol import Chunk, Complete, Error
from darkbloom.protocol.openai import RequestError, chat_chunk, chat_completion, parse_chat_request, to_internal, usage_dict
from darkbloom.server import gateway
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response, read_body


def sse(obj: object) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def chat_completions(request: Request) -> Response:
    try:
        return await _chat_completions(request)
    except RequestError as err:
        return error_response(err)


async def _chat_completions(request: Request) -> Response:
    timing = gateway.Timing()
    consumer = await require_consumer(request)
    req = parse_chat_request(await read_body(request))
    messages, params = to_internal(req)
    state = request.app.state
    job = gateway.InferenceJob(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        model=req.model,
        messages=messages,
        params=params,
        account_id=consumer.account_id,
        api="chat.completions",
        stream=req.stream,
    )
    relay = await gateway.start(job, state.fleet, state.hooks, state.settings, timing)
    created = int(time.time())
    headers = {"X-Request-Id": job.request_id}
    if not req.stream:
        try:
            parts: list[str] = []
            async for frame in relay.frames():
                if isinstance(frame, Chunk):
                    parts.append(frame.text)
                elif isinstance(frame, Complete):
                    usage = usage_dict(frame.usage.prompt_tokens, frame.usage.completion_tokens)
                    body = chat_completion(job.request_id, job.model, created, "".join(parts), frame.finish_reason, usage)
                    return JSONResponse(body, headers=headers)
                elif isinstance(frame, Error):
                    raise gateway.frame_error(frame)
            raise RequestError(502, "provider ended the stream without a terminal frame", type="server_error", code="provider_error")
        finally:
            await relay.close()

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def stream() -> AsyncIterator[bytes]:
        try:
            role_sent = False
            async for frame in relay.frames():
                if isinstance(frame, Chunk):
                    yield sse(chat_chunk(job.request_id, job.model, created, content=frame.text, role=None if role_sent else "assistant"))
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
        finally:
            await relay.close()

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})
