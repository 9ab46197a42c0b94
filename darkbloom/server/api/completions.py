"""``POST /v1/completions``: the legacy OpenAI text-completion adapter over the gateway.

The prompt goes to the node verbatim (``SamplingParams.raw_prompt``): no chat
template. ``echo`` puts the prompt in front of the completion.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol import Chunk, Complete, Error, TokenLogprob
from darkbloom.protocol.openai import usage_dict
from darkbloom.protocol.openai_completions import (
    completion_logprobs,
    completion_params,
    parse_completion_request,
    text_completion,
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
from darkbloom.server.store import ApiKeyRecord


async def completions(request: Request) -> Response:
    return await handle(request, _completions, error_response)


async def _completions(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    req, prompt = parse_completion_request(body)
    params = completion_params(req, prompt)
    await check_features(request, req.model, params, "response_format")
    with_logprobs = params.top_logprobs is not None
    check_fleet_limits(request, req.model, params.max_tokens, "max_tokens")
    timing.parsed = time.perf_counter()
    job = new_job(consumer, "cmpl-", "completions", req.model, (), params, req.stream)
    relay = await dispatch(request, job, timing)
    created = int(time.time())
    echo = prompt if req.echo else ""
    if not req.stream:
        entries: list[TokenLogprob] | None = [] if with_logprobs else None
        text, done = await collect(request, relay, None, entries)
        usage = usage_dict(done.usage)
        logprobs = completion_logprobs(entries)[0] if entries is not None else None
        return json_response(
            text_completion(job.request_id, job.model, created, echo + text, done.finish_reason, usage, logprobs), relay
        )

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events() -> AsyncIterator[bytes]:
        if echo:
            yield sse(text_completion(job.request_id, job.model, created, echo, None))
        offset = 0
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                if with_logprobs and frame.logprobs:
                    logprobs, offset = completion_logprobs(frame.logprobs, offset)
                    yield sse(text_completion(job.request_id, job.model, created, frame.text, None, None, logprobs))
                elif frame.text:
                    yield sse(text_completion(job.request_id, job.model, created, frame.text, None))
            elif isinstance(frame, Complete):
                yield sse(text_completion(job.request_id, job.model, created, "", frame.finish_reason))
                if include_usage:
                    usage = usage_dict(frame.usage)
                    yield sse(text_completion(job.request_id, job.model, created, None, None, usage))
                yield b"data: [DONE]\n\n"
            elif isinstance(frame, Error):
                yield sse(gateway.frame_error(frame).body())

    return stream_response(relay, events(), lambda err: sse(err.body()))
