"""OpenAI-compatible consumer routes: chat completions, models.

Nothing is written to a stream before the first content chunk arrives, so
every failure before it is a clean JSON error; after it, an error is one
``data: {"error": ...}`` event and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from darkbloom.protocol import Chunk, Complete, Error, Frame
from darkbloom.protocol.openai import (
    RequestError,
    chat_chunk,
    chat_completion,
    model_list,
    parse_chat_request,
    to_internal,
    usage_dict,
)
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response, model_not_found, model_unavailable
from darkbloom.server.fleet import Fleet, InFlight, NoNodeError

log = logging.getLogger(__name__)


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _frame_error(frame: Error) -> RequestError:
    kind = "invalid_request_error" if 400 <= frame.status < 500 else "server_error"
    code = frame.code
    return RequestError(frame.status, frame.message, type=kind, code=code)


async def read_body(request: Request) -> bytes:
    """The request body, refusing more than the configured limit with 413."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    chunks = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise RequestError(413, f"request body exceeds {limit} bytes", code="request_too_large")
        chunks.append(part)
    return b"".join(chunks)


async def _next_frame(flight: InFlight, timeout: float) -> Frame:
    try:
        return await asyncio.wait_for(flight.frames.get(), timeout)
    except asyncio.TimeoutError:
        return Error(message=f"no response from the provider within {timeout:.0f} s", code="timeout", status=504, request_id=flight.request_id)


async def chat_completions(request: Request) -> Response:
    try:
        return await _chat_completions(request)
    except RequestError as err:
        return error_response(err)


async def _chat_completions(request: Request) -> Response:
    await require_consumer(request)
    body = await read_body(request)
    req = parse_chat_request(body)
    messages, params = to_internal(req)
    fleet: Fleet = request.app.state.fleet
    settings = request.app.state.settings
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    try:
        flight = await fleet.dispatch(request_id, req.model, messages, params)
    except NoNodeError as exc:
        raise (model_unavailable(req.model) if exc.known else model_not_found(req.model)) from None
    created = int(time.time())
    first = await _next_frame(flight, settings.first_token_timeout_s)
    if isinstance(first, Error):
        fleet.finish(request_id)
        raise _frame_error(first)

    if not req.stream:
        return await _collect(fleet, flight, first, req.model, created, settings.request_timeout_s)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def stream() -> AsyncIterator[bytes]:
        terminal = False
        try:
            frame: Frame = first
            role_sent = False
            while True:
                if isinstance(frame, Chunk):
                    yield _sse(chat_chunk(request_id, req.model, created, content=frame.text, role=None if role_sent else "assistant"))
                    role_sent = True
                elif isinstance(frame, Complete):
                    terminal = True
                    if not role_sent:
                        yield _sse(chat_chunk(request_id, req.model, created, content="", role="assistant"))
                    yield _sse(chat_chunk(request_id, req.model, created, finish_reason=frame.finish_reason))
                    if include_usage:
                        usage = usage_dict(frame.usage.prompt_tokens, frame.usage.completion_tokens)
                        yield _sse(chat_chunk(request_id, req.model, created, usage=usage, empty_choices=True))
                    yield b"data: [DONE]\n\n"
                    return
                elif isinstance(frame, Error):
                    terminal = True
                    yield _sse(_frame_error(frame).body())
                    return
                frame = await _next_frame(flight, settings.request_timeout_s)
        finally:
            if terminal:
                fleet.finish(request_id)
            else:
                with anyio.CancelScope(shield=True):
                    await fleet.cancel(request_id, "client disconnected")

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Request-Id": request_id},
    )


async def _collect(fleet: Fleet, flight: InFlight, first: Frame, model: str, created: int, timeout: float) -> Response:
    parts: list[str] = []
    frame = first
    try:
        while True:
            if isinstance(frame, Chunk):
                parts.append(frame.text)
            elif isinstance(frame, Complete):
                usage = usage_dict(frame.usage.prompt_tokens, frame.usage.completion_tokens)
                body = chat_completion(flight.request_id, model, created, "".join(parts), frame.finish_reason, usage)
                return JSONResponse(body, headers={"X-Request-Id": flight.request_id})
            elif isinstance(frame, Error):
                raise _frame_error(frame)
            frame = await _next_frame(flight, timeout)
    finally:
        fleet.finish(flight.request_id)


async def list_models(request: Request) -> Response:
    try:
        await require_consumer(request)
    except RequestError as err:
        return error_response(err)
    fleet: Fleet = request.app.state.fleet
    return JSONResponse(model_list(fleet.registry.models()))


async def health(request: Request) -> Response:
    fleet: Fleet = request.app.state.fleet
    return JSONResponse({"status": "ok", "nodes": len(fleet.registry.nodes), "models": fleet.registry.models()})


async def not_implemented(request: Request) -> Response:
    err = RequestError(404, f"endpoint {request.method} {request.url.path} is not implemented", code="not_found")
    return error_response(err)
