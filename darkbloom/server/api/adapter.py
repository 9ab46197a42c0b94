"""What every inference adapter shares: auth and body reading, the ``X-Timing`` header,
the checks that need the fleet, dispatch through the gateway, and streaming with a
guaranteed ``Relay.close``.

``X-Timing`` is a JSON object of integer microseconds per stage, in order:

- ``auth``: checking the API key;
- ``parse``: reading and validating the body;
- ``admit``: admission hooks (billing hold, rate limits);
- ``queue``: routing, including any wait for a free slot;
- ``dispatch``: sending the request to the chosen node;
- ``ttft``: from dispatch to the node's first frame (prefill and first token);
- ``total``: from receipt to when the response headers went out (for a
  stream that is the time to first byte; for a whole answer, everything).

A stage the request never reached (it was refused earlier) is left out;
``total`` is always there. Routes that are not inference adapters (model
list, health, the 404 catch-all) carry just ``total``, added by the access
middleware (``darkbloom.server.access``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from darkbloom.protocol import TokenLogprob, ToolCall, structured
from darkbloom.protocol.openai import RequestError
from darkbloom.server import gateway
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import read_body
from darkbloom.server.attestation import privacy_mode, relay_headers
from darkbloom.server.store import ApiKeyRecord

_encode = msgspec.json.Encoder().encode  # ~10x json.dumps; runs once per streamed chunk

_STAGES = (
    ("auth", "received", "authed"),
    ("parse", "authed", "parsed"),
    ("admit", "parsed", "admitted"),
    ("queue", "admitted", "routed"),
    ("dispatch", "routed", "dispatched"),
    ("ttft", "dispatched", "first_frame"),
)

log = logging.getLogger(__name__)

Run = Callable[[Request, ApiKeyRecord, bytes, gateway.Timing], Awaitable[Response]]


def timing_stages(timing: gateway.Timing, now: float | None = None) -> dict[str, int]:
    """Microseconds per stage reached so far, plus ``total`` up to ``now``."""
    out: dict[str, int] = {}
    for name, start, end in _STAGES:
        a, b = getattr(timing, start), getattr(timing, end)
        if a and b:
            out[name] = max(0, round((b - a) * 1e6))
    out["total"] = max(0, round(((now or time.perf_counter()) - timing.received) * 1e6))
    return out


def sse(obj: object) -> bytes:
    """One OpenAI server-sent event carrying a JSON object."""
    return b"data: " + _encode(obj) + b"\n\n"


async def handle(request: Request, run: Run, render_error: Callable[[RequestError], Response]) -> Response:
    """Authenticate, read the body, run the adapter; every refusal in the adapter's error shape.

    Every response, refusals included, carries ``X-Timing``.
    """
    timing = gateway.Timing()
    try:
        consumer = await require_consumer(request)
        timing.authed = time.perf_counter()
        body = await read_body(request)
        response = await run(request, consumer, body, timing)
    except RequestError as err:
        response = render_error(err)
    except Exception:  # a bug must still answer in the route's shape, never a bare 500 page
        log.exception("%s %s failed", request.method, request.url.path)
        response = render_error(internal_error())
    response.headers["X-Timing"] = _encode(timing_stages(timing)).decode()  # compact JSON, as json.dumps would
    response.headers.setdefault("X-Darkbloom-Privacy", privacy_mode(request))
    return response


def internal_error() -> RequestError:
    return RequestError(
        500, "internal error in the coordinator; it has been logged", type="server_error", code="internal_error"
    )


def check_fleet_limits(request: Request, model: str, max_tokens: int, param: str) -> None:
    """Refuse a ``max_tokens`` no node serving ``model`` could ever honour.

    Raises:
        RequestError: 400 (``invalid_value``, naming ``param``) when
            ``max_tokens`` exceeds the model's context length.
    """
    nodes = request.app.state.fleet.registry.candidates(model)
    context = max((n.models[model].context_length for n in nodes), default=0)
    if context and max_tokens > context:
        raise RequestError(
            400,
            f"{param} is too large: {max_tokens}. Model {model!r} has a context of {context} tokens, "
            f"which must hold the prompt and the completion",
            param=param,
            code="invalid_value",
        )


def some_node_has(request: Request, model: str, feature: str) -> bool:
    """Whether a connected node serving ``model`` advertises ``feature`` (a ``ModelInfo`` flag), or none serves it yet."""
    nodes = request.app.state.fleet.registry.candidates(model)
    return not nodes or any(getattr(n.models[model], feature) for n in nodes)


def check_tool_support(request: Request, model: str, forced: bool = False) -> None:
    """Refuse ``tools`` for a model no connected node can render and parse tool calls for, and a
    forced call (``forced``) for one no connected node can force a call of.

    Raises:
        RequestError: 400 naming ``tools`` or ``tool_choice``.
    """
    if not some_node_has(request, model, "supports_tools"):
        raise RequestError(
            400,
            f"model {model!r} does not support tools: its chat template has no tool-calling format "
            f"this network can parse. Send the request without 'tools', or pick a tool-capable model",
            param="tools",
        )
    if forced and not some_node_has(request, model, "supports_tool_choice"):
        raise RequestError(
            400,
            f"model {model!r} cannot be made to call a tool on this network: its tool-call format has no grammar "
            f"here (JSON between <tool_call> markers has), or its nodes predate forced calls. Use tool_choice 'auto'",
            param="tool_choice",
        )


def check_json_support(request: Request, model: str, param: str) -> None:
    """Refuse JSON output for a model none of whose connected nodes can constrain its answers.

    Such a request would otherwise wait in the queue for a node that can.

    Raises:
        RequestError: 400 naming ``param``.
    """
    if not some_node_has(request, model, "supports_json"):
        raise RequestError(
            400,
            f"model {model!r} is served only by nodes that cannot constrain its answers to JSON "
            f"(their software predates it, or the model has no fast tokenizer); send the request without {param}",
            param=param,
        )


def check_logprobs_support(request: Request, model: str) -> None:
    """Refuse ``logprobs`` for a model none of whose connected nodes reports them.

    Raises:
        RequestError: 400 naming ``logprobs``.
    """
    if not some_node_has(request, model, "supports_logprobs"):
        raise RequestError(
            400, f"model {model!r} is served only by nodes that predate logprobs; send the request without them",
            param="logprobs",
        )


async def check_features(request: Request, model: str, params: gateway.SamplingParams, json_param: str) -> None:
    """Refuse what no connected node serving ``model`` can honour: tools (or a forced call), JSON output
    (``json_param`` names the field; its schema is compiled here, in a worker thread), logprobs.

    Raises:
        RequestError: 400 naming the field.
    """
    if params.tools is not None:
        check_tool_support(request, model, params.tool_required)
    if params.response_format is not None:
        check_json_support(request, model, json_param)
        await structured.check_schema(params.json_schema, json_param)
    if params.top_logprobs is not None:
        check_logprobs_support(request, model)


class _RandomIds:
    """128 random bits as 32 hex digits (as ``uuid4().hex``), drawn from the OS 4 KiB at a time.

    One ``getrandom`` system call per 256 ids instead of one per request; a
    forked child starts a pool of its own, so no two processes share ids.
    """

    __slots__ = ("_pool", "_at")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._pool, self._at = b"", 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


_random_id = _RandomIds()


def new_job(
    consumer: ApiKeyRecord,
    id_prefix: str,
    api: str,
    model: str,
    messages: tuple[gateway.ChatMessage, ...],
    params: gateway.SamplingParams,
    stream: bool,
    **extra: Any,
) -> gateway.InferenceJob:
    """The job every adapter hands the gateway: a fresh request id, and who is paying and rate-limited.

    ``extra`` sets the job's optional fields (a sealed envelope, a prompt-token hint).
    """
    return gateway.InferenceJob(
        request_id=f"{id_prefix}{_random_id()}",
        model=model,
        messages=messages,
        params=params,
        account_id=consumer.account_id,
        key_id=consumer.key_id,
        api=api,
        stream=stream,
        **extra,
    )


class Hangup:
    """Watches, for the whole of a request, for its consumer going away; then calls ``then``.

    Started before admission, so a consumer who gives up while its request
    waits in the queue or for its first token frees the node at once
    (``dispatch``); the response that follows takes it over (``RelayStream``,
    ``collect``) instead of starting a watcher of its own.
    """

    __slots__ = ("then", "_task")

    def __init__(self, receive: Receive, then: Callable[[], object]) -> None:
        self.then = then
        self._task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.then()

    def stop(self) -> None:
        self._task.cancel()


async def dispatch(request: Request, job: gateway.InferenceJob, timing: gateway.Timing) -> gateway.Relay:
    """Admit, route and dispatch ``job``; returns once the node's first frame is in.

    Raises:
        RequestError: as ``gateway.start`` does, or 499 when the consumer hung
            up first (the request is then cancelled on the node and settled).
    """
    state = request.app.state
    current = asyncio.current_task()
    assert current is not None
    gone: list[bool] = []

    def hung_up() -> None:
        gone.append(True)
        current.cancel()

    hangup = Hangup(request.receive, hung_up)
    try:
        relay = await gateway.start(job, state.fleet, state.hooks, state.settings, timing)
    except asyncio.CancelledError:
        hangup.stop()
        if gone and current.uncancel() == 0:
            raise RequestError(499, "client closed the request", code="client_closed_request") from None
        raise
    except BaseException:
        hangup.stop()
        raise
    hangup.then = relay.abandon
    relay.hangup = hangup
    return relay


async def collect(
    request: Request,
    relay: gateway.Relay,
    tool_calls: list[ToolCall] | None = None,
    logprobs: list[TokenLogprob] | None = None,
) -> tuple[str, gateway.Complete]:
    """A whole (non-streamed) answer: its text and the terminal frame. Closes the relay.

    Tool calls the model made are appended to ``tool_calls``, and its tokens'
    log probabilities to ``logprobs``, when given.

    A caller that hangs up while waiting gets its generation cancelled on the
    node at once, as a streaming caller does.

    Raises:
        RequestError: the node failed, the stream ended without a terminal
            frame, or (499) the client went away.
    """
    outcome: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def gather() -> None:
            try:
                outcome["answer"] = await _collect(relay, tool_calls, logprobs)
            except RequestError as err:
                outcome["error"] = err
            finally:
                tg.cancel_scope.cancel()

        # Watching since dispatch; from here a hang-up stops the collecting.
        hangup = relay.hangup or Hangup(request.receive, relay.abandon)
        hangup.then = tg.cancel_scope.cancel
        tg.start_soon(gather)
    hangup.stop()
    if "answer" in outcome:
        return outcome["answer"]  # type: ignore[no-any-return]
    raise outcome.get("error") or RequestError(499, "client closed the request", code="client_closed_request")


async def _collect(
    relay: gateway.Relay, tool_calls: list[ToolCall] | None, logprobs: list[TokenLogprob] | None
) -> tuple[str, gateway.Complete]:
    try:
        parts: list[str] = []
        async for frame in relay.frames():
            if isinstance(frame, gateway.Chunk):
                parts.append(frame.text)
                if tool_calls is not None:
                    tool_calls.extend(frame.tool_calls)
                if logprobs is not None:
                    logprobs.extend(frame.logprobs)
            elif isinstance(frame, gateway.Complete):
                return "".join(parts), frame
            elif isinstance(frame, gateway.Error):
                raise gateway.frame_error(frame)
        raise RequestError(
            502, "provider ended the stream without a terminal frame", type="server_error", code="provider_error"
        )
    finally:
        await relay.close()


def json_response(body: dict[str, object], relay: gateway.Relay) -> JSONResponse:
    return JSONResponse(body, headers={"X-Request-Id": relay.job.request_id, **relay_headers(relay, receipt=True)})


def stream_response(
    relay: gateway.Relay, events: AsyncIterator[bytes], error_event: Callable[[RequestError], bytes]
) -> StreamingResponse:
    """Stream ``events``; the relay is closed when they end, fail, or the client goes away.

    A bug while streaming ends the stream with one ``error_event`` in the
    route's own shape rather than a cut connection.
    """
    return RelayStream(
        relay,
        events,
        error_event,
        headers={"Cache-Control": "no-cache", "X-Request-Id": relay.job.request_id, **relay_headers(relay)},
    )


class RelayStream(StreamingResponse):
    """A relay's event stream, watching for the client to hang up with one plain task.

    Starlette's ``StreamingResponse`` runs an anyio task group per response
    for that; this one keeps the plain watcher started at dispatch
    (``Hangup``), which on ``http.disconnect`` tells the relay
    (``Relay.abandon``), ending the stream at once, even between tokens. Either way ``Relay.close``
    runs exactly once when the response is over: the node hears ``cancel``
    and the request is settled.
    """

    def __init__(
        self,
        relay: gateway.Relay,
        content: AsyncIterator[bytes],
        error_event: Callable[[RequestError], bytes],
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.relay = relay
        self.error_event = error_event

    async def stream_response(self, send: Send) -> None:
        """Every event as it comes; what follows the terminal frame goes out in one last write.

        Once the node's terminal frame is in, the route's closing events
        (a finish chunk, usage, ``[DONE]``...) follow without waiting, so they
        are joined with the end of the body: one system call, not four.
        """
        relay = self.relay
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        tail: list[bytes] = []
        events = self.body_iterator.__aiter__()
        while True:
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
            except Exception:  # a bug in the route's events (not a failed send): end in the route's shape
                log.exception("stream of %s failed", relay.job.request_id)
                tail.append(self.error_event(internal_error()))
                break
            if relay.terminal is not None:
                tail.append(event)  # type: ignore[arg-type]
            else:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        if relay.terminal is not None:
            # Settled before the consumer sees the end (queueing the posting is all it waits for): a
            # balance or usage read sent after ``[DONE]`` then includes this request.
            await relay.close()
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        hangup = relay.hangup or Hangup(receive, relay.abandon)  # watching since dispatch (it calls relay.abandon)
        try:
            await self.stream_response(send)
        except OSError:  # servers speaking ASGI 2.4 raise on a send after the client left
            relay.abandon()
        finally:
            hangup.stop()
            await relay.close()
