"""``POST /v1/messages``: the Anthropic Messages adapter over the gateway.

Auth is ``x-api-key`` (or Bearer); every refusal is an Anthropic error object;
an error after the stream started is one ``error`` event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom.protocol import Chunk, Complete, Error, ToolCall
from darkbloom.protocol.anthropic import (
    message_object,
    parse_count_tokens_request,
    parse_messages_request,
    stop_reason,
    stream_block_stop,
    stream_closing,
    stream_delta,
    stream_error,
    stream_opening,
    stream_text_start,
    stream_tool_use,
)
from darkbloom.protocol.openai import RequestError
from darkbloom.server import gateway
from darkbloom.server.api.adapter import (
    check_features,
    check_fleet_limits,
    check_tool_support,
    collect,
    dispatch,
    handle,
    json_response,
    new_job,
    stream_response,
)
from darkbloom.server.api.errors import anthropic_error
from darkbloom.server.billing.hook import BillingHook
from darkbloom.server.store import ApiKeyRecord


async def messages(request: Request) -> Response:
    return await handle(request, _messages, anthropic_error)


async def count_tokens(request: Request) -> Response:
    return await handle(request, _count_tokens, anthropic_error)


async def _count_tokens(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    """``{"input_tokens": N}``: a node serving the model renders the prompt with its chat template and counts it.

    Routed like any request (so queued, and 429 when the fleet is full) and
    counted against the key's request rate, but free: no hold, no charge, no
    token budget; the node generates nothing.
    """
    req, chat, params = parse_count_tokens_request(body)
    if params.tools is not None:
        check_tool_support(request, req.model)
    timing.parsed = time.perf_counter()
    job = new_job(consumer, "cnt_", "messages.count_tokens", req.model, chat, params, False)
    state = request.app.state
    for hook in state.hooks:
        if isinstance(hook, BillingHook):
            hook.limit_rate(job)
    relay = await gateway.start(job, state.fleet, [], state.settings, timing)
    try:
        first = relay.first
        if not isinstance(first, Complete):  # a node that predates count_only: its one token, then the count
            async for frame in relay.frames():
                first = frame
    finally:
        await relay.close()
    if not isinstance(first, Complete):
        raise RequestError(502, "the provider did not report a token count", type="api_error")
    return JSONResponse({"input_tokens": first.usage.prompt_tokens})


async def _messages(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    req, chat, params = parse_messages_request(body)
    await check_features(request, req.model, params, "output_config.format" if req.output_config else "output_format")
    check_fleet_limits(request, req.model, params.max_tokens, "max_tokens")
    timing.parsed = time.perf_counter()
    job = new_job(consumer, "msg_", "messages", req.model, chat, params, req.stream)
    relay = await dispatch(request, job, timing)
    if not req.stream:
        calls: list[ToolCall] = []
        text, done = await collect(request, relay, calls)
        u = done.usage
        reason = stop_reason(done.finish_reason, done.stop_sequence)
        body_out = message_object(
            job.request_id, job.model, text, reason, u.prompt_tokens, u.completion_tokens, done.stop_sequence, calls
        )
        return json_response(body_out, relay)

    async def events() -> AsyncIterator[bytes]:
        for event in stream_opening(job.request_id, job.model):
            yield event
        text_block: int | None = 0  # the text block open now (block 0 opens with the stream)
        blocks = 1
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                if frame.text:
                    if text_block is None:  # text after a tool call: a block of its own
                        text_block, blocks = blocks, blocks + 1
                        yield stream_text_start(text_block)
                    yield stream_delta(frame.text, text_block)
                for call in frame.tool_calls:
                    if text_block is not None:
                        yield stream_block_stop(text_block)
                        text_block = None
                    for event in stream_tool_use(blocks, call):
                        yield event
                    blocks += 1
            elif isinstance(frame, Complete):
                u = frame.usage
                reason = stop_reason(frame.finish_reason, frame.stop_sequence)
                for event in stream_closing(reason, u.prompt_tokens, u.completion_tokens, frame.stop_sequence, open_block=text_block):
                    yield event
            elif isinstance(frame, Error):
                yield stream_error(gateway.frame_error(frame))

    return stream_response(relay, events(), stream_error)
