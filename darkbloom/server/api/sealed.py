"""Sealed chat completions: ``POST /v1/chat/completions`` with a sealed envelope body.

The body (``Content-Type: application/darkbloom-sealed+json``) carries only
plaintext routing hints and an envelope the coordinator cannot open:

    {"model": "...", "max_tokens": 256, "prompt_tokens_estimate": 40,
     "envelope": {"version": 1, "algorithm": "...", "nonce": "...",
                  "ciphertext": "...", "recipients": {"node-...": "..."}}}

The answer is always an event stream of still-encrypted chunks, then one
``complete`` event with usage and the node's signed receipt (or one ``error``
event). See docs/sealed-envelope.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol import Chunk, Complete, Error, SamplingParams, SealedEnvelope
from darkbloom.protocol.openai import NOT_UTF8, RequestError, usage_dict
from darkbloom.protocol.sealed import SEALED_CONTENT_TYPE, SealedError, check_envelope
from darkbloom.server import gateway
from darkbloom.server.api.adapter import dispatch, new_job, stream_response
from darkbloom.server.store import ApiKeyRecord

_encode = msgspec.json.Encoder().encode  # ~10x json.dumps; runs once per streamed chunk


class SealedChatRequest(msgspec.Struct, frozen=True):
    """The plaintext part of a sealed chat request: routing hints and the envelope."""

    model: str
    envelope: SealedEnvelope
    max_tokens: int = 256
    prompt_tokens_estimate: int = 0


_decoder = msgspec.json.Decoder(SealedChatRequest)


def is_sealed(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == SEALED_CONTENT_TYPE


def parse_sealed_request(body: bytes) -> SealedChatRequest:
    """Decode and check a sealed request body.

    Raises:
        RequestError: 400 for invalid JSON, missing hints, or a malformed envelope.
    """
    if not body.strip():
        raise RequestError(400, "request body is empty; expected a sealed request object")
    try:
        req = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise RequestError(400, f"invalid sealed request: {exc}", code="invalid_envelope") from None
    except msgspec.DecodeError as exc:
        raise RequestError(400, f"invalid JSON body: {exc}") from None
    except UnicodeDecodeError:
        raise RequestError(400, NOT_UTF8) from None
    if not req.model:
        raise RequestError(400, "model must be a non-empty string", param="model")
    if req.max_tokens < 1 or req.prompt_tokens_estimate < 0:
        raise RequestError(
            400, "max_tokens must be positive and prompt_tokens_estimate not negative", param="max_tokens"
        )
    try:
        check_envelope(req.envelope)
    except SealedError as exc:
        raise RequestError(400, str(exc), code="invalid_envelope", param="envelope") from None
    return req


def _event(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


async def sealed_chat(request: Request, consumer: ApiKeyRecord, body: bytes, timing: gateway.Timing) -> Response:
    """Admit, route among the envelope's recipients, and relay ciphertext back (an adapter ``Run``)."""
    req = parse_sealed_request(body)
    timing.parsed = time.perf_counter()
    job = new_job(
        consumer,
        "chatcmpl-",
        "chat.completions",
        req.model,
        (),
        SamplingParams(max_tokens=req.max_tokens),
        True,
        sealed=req.envelope,
        prompt_tokens=req.prompt_tokens_estimate or None,
    )
    relay = await dispatch(request, job, timing)
    receipts = request.app.state.receipts

    async def events() -> AsyncIterator[bytes]:
        async for frame in relay.frames():
            if isinstance(frame, Chunk):
                yield _event({"type": "chunk", "seq": frame.seq, "sealed": frame.sealed, "tokens": frame.tokens})
            elif isinstance(frame, Complete):
                receipt = receipts.get(relay.flight.request_id)
                yield _event(
                    {
                        "type": "complete",
                        "id": job.request_id,
                        "node_id": relay.node_id,
                        "finish_reason": frame.finish_reason,
                        "usage": usage_dict(frame.usage),
                        "receipt": msgspec.to_builtins(receipt) if receipt is not None else None,
                    }
                )
            elif isinstance(frame, Error):
                yield _error_event(gateway.frame_error(frame))

    return stream_response(relay, events(), _error_event)


def _error_event(err: RequestError) -> bytes:
    return _event({"type": "error", **err.body()})
