"""``darkbloom proxy``: a local OpenAI-compatible endpoint that seals every request.

Any OpenAI SDK or tool pointed at ``http://127.0.0.1:8421/v1`` gets sealed
mode unchanged: the proxy validates the chat body, seals it on this machine
to k attested nodes, and turns the encrypted answer back into OpenAI chat
completion objects or stream chunks. The coordinator only ever sees
ciphertext and the routing hints.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from darkbloom.client.sealing import SealedClient, SealedDone, SealedRequestError, SealedStart, SealedText
from darkbloom.protocol import ToolCall
from darkbloom.protocol.openai import RequestError, chat_chunk, chat_completion, parse_chat_request, tool_call_dicts
from darkbloom.protocol.sealed import AttestationError, SealedError, b64e

MAX_BODY_BYTES = 16 * 1024 * 1024
_FORWARD_HEADERS = (
    "x-request-id",
    "x-darkbloom-privacy",
    "x-provider-id",
    "x-provider-attested",
    "x-provider-trust-level",
    "x-provider-chip",
)


def _error(status: int, message: str, *, code: str | None = None, type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(RequestError(status, message, type=type, code=code).body(), status_code=status)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _receipt_fields(done: SealedDone) -> dict[str, Any]:
    if done.receipt is None:
        return {}
    return {"darkbloom_receipt": msgspec.to_builtins(done.receipt)}


def create_proxy_app(coordinator: str, api_key: str, *, k: int = 3) -> Starlette:
    """The proxy app. ``coordinator`` is the coordinator's base URL."""
    sealed = SealedClient(coordinator, api_key, k=k)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await sealed.aclose()

    async def chat(request: Request) -> Response:
        body_bytes = await request.body()
        if len(body_bytes) > MAX_BODY_BYTES:
            return _error(413, f"request body exceeds {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            req = parse_chat_request(body_bytes)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        body = json.loads(body_bytes)
        events = sealed.chat(body)
        try:
            start = await anext(events)
        except SealedRequestError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except (SealedError, AttestationError) as exc:
            return _error(502, f"sealed request failed: {exc}", code="sealed_error", type="server_error")
        except httpx.HTTPError as exc:
            return _error(
                502, f"could not reach the coordinator: {exc}", code="coordinator_unreachable", type="server_error"
            )
        assert isinstance(start, SealedStart)
        headers = {name: start.headers[name] for name in _FORWARD_HEADERS if name in start.headers}
        created = int(time.time())
        rid = start.request_id
        if not req.stream:
            try:
                parts: list[str] = []
                calls: list[ToolCall] = []
                async for ev in events:
                    if isinstance(ev, SealedText):
                        parts.append(ev.text)
                        calls.extend(ev.tool_calls)
                    elif isinstance(ev, SealedDone):
                        extra = {"X-Darkbloom-Receipt": b64e(msgspec.json.encode(ev.receipt))} if ev.receipt else {}
                        text, reason = "".join(parts), ev.finish_reason
                        out = chat_completion(
                            rid, req.model, created, text, reason, ev.usage, tool_call_dicts(calls) or None
                        )
                        return JSONResponse({**out, **_receipt_fields(ev)}, headers={**headers, **extra})
            except SealedRequestError as exc:
                return JSONResponse(exc.body, status_code=exc.status, headers=headers)
            except (SealedError, AttestationError) as exc:
                return _error(502, f"sealed answer rejected: {exc}", code="sealed_error", type="server_error")
            finally:
                await events.aclose()
            return _error(502, "the sealed stream ended early", code="provider_error", type="server_error")

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def stream() -> AsyncIterator[bytes]:
            role_sent = False
            n_calls = 0
            try:
                async for ev in events:
                    if isinstance(ev, SealedText):
                        if ev.text or not ev.tool_calls or not role_sent:
                            role = None if role_sent else "assistant"
                            yield _sse(chat_chunk(rid, req.model, created, content=ev.text, role=role))
                            role_sent = True
                        if ev.tool_calls:
                            deltas = tool_call_dicts(ev.tool_calls, n_calls, indexed=True)
                            n_calls += len(deltas)
                            yield _sse(chat_chunk(rid, req.model, created, tool_calls=deltas))
                    elif isinstance(ev, SealedDone):
                        if not role_sent:
                            yield _sse(chat_chunk(rid, req.model, created, content="", role="assistant"))
                        yield _sse(
                            {
                                **chat_chunk(rid, req.model, created, finish_reason=ev.finish_reason),
                                **_receipt_fields(ev),
                            }
                        )
                        if include_usage:
                            yield _sse(chat_chunk(rid, req.model, created, usage=ev.usage, empty_choices=True))
                        yield b"data: [DONE]\n\n"
            except SealedRequestError as exc:
                yield _sse(exc.body)
            except (SealedError, AttestationError) as exc:
                yield _sse(
                    RequestError(502, f"sealed answer rejected: {exc}", type="server_error", code="sealed_error").body()
                )
            finally:
                await events.aclose()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers}
        )

    async def models(request: Request) -> Response:
        try:
            resp = await sealed.http.get(f"{sealed.base_url}/v1/models", headers=sealed.headers)
        except httpx.HTTPError as exc:
            return _error(
                502, f"could not reach the coordinator: {exc}", code="coordinator_unreachable", type="server_error"
            )
        return Response(resp.content, status_code=resp.status_code, media_type="application/json")

    async def not_implemented(request: Request) -> Response:
        return _error(
            404,
            f"endpoint {request.method} {request.url.path} is not implemented by the sealing proxy",
            code="not_found",
        )

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/{rest:path}", not_implemented, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def run_proxy(coordinator: str, api_key: str, *, port: int = 8421, k: int = 3, say: Any = print) -> None:
    """Serve the proxy on 127.0.0.1 until interrupted.

    Raises:
        darkbloom.listen.ListenError: something already listens on ``port``.
    """
    import uvicorn

    from darkbloom.listen import listen

    sock = listen("127.0.0.1", port)
    say(f"darkbloom proxy: sealing every request to {coordinator}; point OpenAI clients at http://127.0.0.1:{port}/v1")
    server = uvicorn.Server(uvicorn.Config(create_proxy_app(coordinator, api_key, k=k), log_level="warning"))
    server.run(sockets=[sock])
