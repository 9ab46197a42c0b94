"""``POST /v1/chat/completions``: the OpenAI chat adapter over the gateway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol import Chunk, Complete, Error, TokenLogprob, ToolCall
from darkbloom.protocol.openai import (
    chat_chunk,
    chat_completion,
    logprob_entries,
    parse_chat_request,
    to_internal,
    tool_call_dicts,
    usage_dict,
)
from darkbloom.server import gateway
from darkbloom.server.api.adapter import (
    check_features,
    check_fleet_limits,
    collect,
    dispatch,
    handle,
    json_response,
    new_job,
    sse,
    stream_response,
)
from darkbloom.server.api.errors import error_response
from darkbloom.server.api.sealed import is_sealed, sealed_chat
from darkbloom.server.store import ApiKeyRecord

_json = msgspec.json.Encoder().encode


def content_sse(completion_id: str, model: str, created: int) -> Callable[[str], bytes]:
    """The event for a plain content delta, byte for byte ``sse(chat_chunk(..., content=text))``.

    Every streamed token is one of these: only the text is encoded per
    chunk, the rest of the object is built once per stream.
    """
    head = (
        b'data: {"id":' + _json(completion_id) + b',"object":"chat.completion.chunk","created":'
        + _json(created) + b',"model":' + _json(model) + b',"choices":[{"index":0,"delta":{"content":'
    )
    tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def event(text: str) -> bytes:
        return head + _json(text) + tail

    return event


async def chat_completions(request: Request) -> Response:
    # A sealed body (its own content type) is routed as ciphertext: see api/sealed.py.
    return await handle(request, sealed_chat if is_sealed(request) else _chat_completions, error_response)


async def _chat_completions(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    req = parse_chat_request(body)
    messages, params = to_internal(req)
    await check_features(request, req.model, params, "response_format")
    check_fleet_limits(
        request, req.model, params.max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    )
    timing.parsed = time.perf_counter()
    job = new_job(consumer, "chatcmpl-", "chat.completions", req.model, messages, params, req.stream)
    relay = await dispatch(request, job, timing)
    created = int(time.time())
    with_logprobs = params.top_logprobs is not None
    if not req.stream:
        calls: list[ToolCall] = []
        logprobs: list[TokenLogprob] | None = [] if with_logprobs else None
        text, done = await collect(request, relay, calls, logprobs)
        usage = usage_dict(done.usage)
        body = chat_completion(
            job.request_id, job.model, created, text, done.finish_reason, usage, tool_call_dicts(calls) or None,
            logprob_entries(logprobs) if logprobs is not None else None,
        )
        return json_response(body, relay)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    content_event = content_sse(job.request_id, job.model, created)

    async def events() -> AsyncIterator[bytes]:
        role_sent = False
        n_calls = 0
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                lp = logprob_entries(frame.logprobs) if with_logprobs else None
                if role_sent and frame.text and not frame.tool_calls and lp is None:
                    yield content_event(frame.text)  # the common chunk, from a template
                elif frame.text or not frame.tool_calls or not role_sent:
                    yield sse(
                        chat_chunk(
                            job.request_id,
                            job.model,
                            created,
                            content=frame.text,
                            role=None if role_sent else "assistant",
                            logprobs=lp,
                        )
                    )
                    role_sent, lp = True, None
                if frame.tool_calls:
                    deltas = tool_call_dicts(frame.tool_calls, n_calls, indexed=True)
                    n_calls += len(deltas)
                    yield sse(chat_chunk(job.request_id, job.model, created, tool_calls=deltas, logprobs=lp))
            elif isinstance(frame, Complete):
                if not role_sent:
                    yield sse(chat_chunk(job.request_id, job.model, created, content="", role="assistant"))
                yield sse(chat_chunk(job.request_id, job.model, created, finish_reason=frame.finish_reason))
                if include_usage:
                    usage = usage_dict(frame.usage)
                    yield sse(chat_chunk(job.request_id, job.model, created, usage=usage, empty_choices=True))
                yield b"data: [DONE]\n\n"
            elif isinstance(frame, Error):
                yield sse(gateway.frame_error(frame).body())

    return stream_response(relay, events(), lambda err: sse(err.body()))
