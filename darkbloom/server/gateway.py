"""The request path every consumer API shares, from admission to settlement.

Each public API (chat completions, and later completions, responses,
messages) is an adapter: it parses its own body into one ``InferenceJob``,
calls ``start``, and formats the ``Relay``'s frames in its own wire shape.
Everything between (admission hooks such as billing holds and rate limits,
routing, dispatch, the wait for the first frame, cancel on disconnect, and
exactly one terminal settlement) happens here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import msgspec

from darkbloom.logging_setup import set_request_id
from darkbloom.protocol import ChatMessage, Chunk, Complete, Error, Frame, SamplingParams, SealedEnvelope, Usage
from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.errors import model_not_found, model_unavailable
from darkbloom.server.fleet import SHUTTING_DOWN, Fleet, InFlight, NoNodeError, Refused
from darkbloom.server.routing.queue import retry_after_s
from darkbloom.server.settings import Settings

log = logging.getLogger(__name__)

Outcome = Literal["completed", "failed", "cancelled"]


@dataclass(frozen=True)
class InferenceJob:
    """One consumer request in the coordinator's own terms, whatever API it came from."""

    request_id: str
    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    account_id: str
    api: str = "chat.completions"
    stream: bool = False
    prompt_tokens: int | None = None
    """Routing hint; estimated from ``messages`` when not given (a sealed request gives it)."""
    key_id: str = ""
    """The API key that sent it: rate limits are per key."""
    sealed: SealedEnvelope | None = None
    """Sealed mode: the envelope the consumer sealed to k nodes; ``messages`` is then empty and
    ``params`` holds only the plaintext hints. Routing, hedging and failover stay among its recipients."""


@dataclass
class Timing:
    """Monotonic stage stamps (``time.perf_counter``) for the ``X-Timing`` header."""

    received: float = field(default_factory=time.perf_counter)
    authed: float = 0.0
    parsed: float = 0.0
    admitted: float = 0.0
    routed: float = 0.0
    dispatched: float = 0.0
    first_frame: float = 0.0
    finished: float = 0.0


class RequestHook(Protocol):
    """Something that takes part in every request (billing, rate limits, metrics).

    ``admit`` runs before any node sees the request and may refuse it by
    raising ``RequestError``; ``settle`` runs exactly once per admitted job,
    after its terminal state, with the usage the node reported (if any).
    """

    async def admit(self, job: InferenceJob) -> None: ...

    # Optional: ``async def admit_early(job) -> Future | None`` admits like ``admit`` but may return a
    # future still finishing admission (a hold being written); the gateway dispatches meanwhile, ends the
    # request with its error should it fail (``Relay.refusal``), and awaits it before the answer ends.

    async def settle(self, job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None: ...


@runtime_checkable
class StreamTap(Protocol):
    """A hook that also watches the stream (metrics). Called on the relay's hot path: keep it cheap.

    ``first_frame`` runs once, when the first frame arrives (``timing`` then
    has ``received``, ``admitted``, ``dispatched`` and ``first_frame``);
    ``chunk`` runs for every later chunk with the seconds since the previous
    frame and the chunk's payload length (text, or base64 when sealed: no
    encoding pass on the hot path, so non-ASCII text counts characters).
    """

    def first_frame(self, job: InferenceJob, timing: Timing, frame: Frame) -> None: ...

    def chunk(self, job: InferenceJob, gap_s: float, nbytes: int) -> None: ...


def _refusal(frame: Error) -> bool:
    """The node refused for capacity (429, or any error carrying ``feasible_after_ms``)."""
    return frame.status == 429 or frame.feasible_after_ms is not None


def _retryable(frame: Error) -> bool:
    """Worth sending elsewhere before any content: a node fault (5xx but a timeout) or a capacity refusal."""
    return (frame.status >= 500 and frame.status != 504) or _refusal(frame)


def frame_error(frame: Error) -> RequestError:
    """An ``error`` frame from a node as a consumer-facing error (a capacity refusal keeps its Retry-After)."""
    if _refusal(frame):
        retry = retry_after_s(0, feasible_after_ms=frame.feasible_after_ms)
        return RequestError(429, frame.message, type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
    if frame.code == "insufficient_funds":  # the same shape as a 402 at admission
        return RequestError(frame.status, frame.message, type="insufficient_funds", code=frame.code)
    kind = "invalid_request_error" if 400 <= frame.status < 500 else "server_error"
    return RequestError(frame.status, frame.message, type=kind, code=frame.code)


class Relay:
    """A dispatched request: its frames in order, and exactly one ending.

    Until the first content arrives the relay may hold two flights: the
    first node's, and a speculative one on a second node (see ``wait_first``).
    The first to produce content wins; the other is cancelled; the job is
    settled once, naming the winner.
    """

    def __init__(self, job: InferenceJob, flight: InFlight, fleet: Fleet, hooks: list[RequestHook], settings: Settings, timing: Timing) -> None:
        self.job = job
        self.flight = flight
        self.fleet = fleet
        self.hooks = hooks
        self.settings = settings
        self.timing = timing
        self.first: Frame | None = None
        self.terminal: Frame | None = None
        self.hedged = False
        self._others: list[InFlight] = []
        self._closed = False
        self.abandoned = False
        self.refused = False
        self._taps = _taps(hooks)
        self.hangup: Any = None
        """The watcher for the consumer going away (``api.adapter.Hangup``), when the adapter started one."""
        self.admission: list[asyncio.Future[None]] = []
        """Admission still finishing behind the request (a hold being written; see ``BillingHook.admit_early``)."""
        self._one_call = not job.params.parallel_tool_calls
        self._calls = 0  # tool calls relayed so far (counted when only one may pass)

    @property
    def node_id(self) -> str:
        return self.flight.node_id

    @property
    def privacy(self) -> str:
        """``sealed`` when the consumer sealed the request, else ``coordinator-visible``."""
        return "sealed" if self.job.sealed is not None else "coordinator-visible"

    def _timeout_error(self, timeout: float) -> Error:
        return Error(
            message=f"no response from the provider within {timeout:.0f} s",
            code="timeout",
            status=504,
            request_id=self.job.request_id,  # type: ignore[arg-type]
        )

    async def _next(self, timeout: float) -> Frame:
        frame = await self.flight.next(timeout)
        return frame if frame is not None else self._timeout_error(timeout)

    async def wait_first(self) -> Frame:
        """The first frame that counts: content (a chunk or ``complete``) or the final error.

        Hedging: if nothing has arrived by half the first-content deadline
        and the governor allows it, the request goes to a second node too.
        Failover: an error before any content from one node leaves the race
        to the other, or (once, when no hedge is running) to a fresh node.
        """
        fleet = self.fleet
        deadline = time.perf_counter() + self.settings.first_token_timeout_s
        hedge_at = time.perf_counter() + fleet.hedge_delay_s(self.flight)
        flights = [self.flight]
        tried = {self.flight.node_id}
        failovers = 0
        last_error: Error | None = None
        while True:
            for f in flights:
                frame = f.pop()
                if frame is None:
                    continue
                if isinstance(frame, Error) and (len(flights) > 1 or (failovers == 0 and _retryable(frame))):
                    last_error = frame
                    flights.remove(f)
                    # A capacity refusal is the node being honest, not failing: it does not trip its breaker.
                    fleet.finish(f.request_id, ok=False if frame.status >= 500 and not _refusal(frame) else None)
                    if not flights:
                        failovers += 1
                        spare = await self._extra_flight(tried, failover=True)
                        if spare is None:
                            return await self._won(f, last_error, flights)
                        flights.append(spare)
                        spare.wake = f.wake
                    break
                return await self._won(f, frame, flights)
            else:
                if self.admission and (refused := self.refusal()) is not None:
                    return await self._won(flights[0], self._refused_frame(refused), flights)
                now = time.perf_counter()
                if now >= deadline:
                    return await self._won(flights[0], self._timeout_error(self.settings.first_token_timeout_s), flights)
                wake = flights[0].wake
                wait = deadline - now
                if not self.hedged and len(flights) == 1:
                    if now >= hedge_at:
                        self.hedged = True  # one hedge at most, whether or not it could go
                        hedge = await self._extra_flight(tried, failover=False)
                        if hedge is not None:
                            hedge.wake = wake
                            flights.append(hedge)
                        continue
                    wait = min(wait, hedge_at - now)
                self._others = [f for f in flights if f is not self.flight]
                wake.clear()
                if any(f.pending() for f in flights):
                    continue
                await wake.wait_for(wait)

    async def _extra_flight(self, tried: set[str], *, failover: bool) -> InFlight | None:
        fleet, job = self.fleet, self.job
        if not failover and not fleet.may_hedge(job.model):
            return None
        rid = f"{job.request_id}-{'f' if failover else 'h'}{len(tried)}"
        try:
            flight = await fleet.dispatch(
                rid, job.model, job.messages, job.params,
                prompt_tokens=job.prompt_tokens, exclude=frozenset(tried), queue=False, sealed=job.sealed,
            )
        except (NoNodeError, Refused):
            return None
        tried.add(flight.node_id)
        log.info("request %s: %s to node %s", job.request_id, "failing over" if failover else "hedging", flight.node_id)
        return flight

    async def _won(self, winner: InFlight, frame: Frame, flights: list[InFlight]) -> Frame:
        hedge_involved = self.hedged and (len(flights) > 1 or winner is not self.flight)
        if hedge_involved and not isinstance(frame, Error):
            self.fleet.state.governor.record(hedge_won=winner is not self.flight)
        losers = [f for f in flights if f is not winner]
        self.flight = winner
        self._others = losers
        for loser in losers:
            await self.fleet.cancel(loser.request_id, "another provider answered first")
        self._others = []
        self.first = frame
        self.timing.first_frame = time.perf_counter()
        for tap in self._taps:
            tap.first_frame(self.job, self.timing, frame)
        return frame

    def watch_admission(self, pending: list[asyncio.Future[None]]) -> None:
        """Admission still finishing behind the request: should it refuse, the relay stops waiting for the node."""
        self.admission = pending
        for fut in pending:
            fut.add_done_callback(self._admission_answered)

    def _admission_answered(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            for flight in (self.flight, *self._others):
                flight.abandoned = True  # ``next`` returns at once; ``frames`` then ends with the refusal
                flight.wake.set()

    def refusal(self) -> BaseException | None:
        """Why admission, still finishing behind the request, refused it; ``None`` while it has not (yet)."""
        if not self.admission:
            return None
        still: list[asyncio.Future[None]] = []
        for fut in self.admission:
            if not fut.done():
                still.append(fut)
            elif fut.cancelled():
                return asyncio.CancelledError()
            elif (exc := fut.exception()) is not None:
                return exc
        self.admission = still
        return None

    async def admitted(self) -> BaseException | None:
        """Wait for admission to finish; why it refused the request, or ``None``."""
        for fut in self.admission:
            if not fut.done():
                expedite = getattr(fut, "expedite", None)  # a hold waiting to share a commit: write it now
                if expedite is not None:
                    expedite()
                with contextlib.suppress(BaseException):
                    await asyncio.shield(fut)
        return self.refusal()

    def _refused_frame(self, exc: BaseException) -> Error:
        """Admission refused a request already answering: it ends with that error (the node is cancelled in ``close``)."""
        self.refused = True
        if isinstance(exc, RequestError):
            return Error(message=exc.message, code=exc.code or "refused", status=exc.status, request_id=self.job.request_id)  # type: ignore[arg-type]
        log.error("admission of %s failed after dispatch: %r", self.job.request_id, exc)
        return Error(message="internal error in the coordinator; it has been logged", code="internal_error", status=500, request_id=self.job.request_id)  # type: ignore[arg-type]

    async def frames(self) -> AsyncIterator[Frame]:
        """Every frame from the first to the terminal one (``complete`` or ``error``).

        A refusal from admission still finishing (see ``admission``) ends
        the stream with that error instead; ``complete`` waits for admission
        to finish, so a request is never answered whole without its hold.
        """
        frame = self.first if self.first is not None else await self.wait_first()
        last = self.timing.first_frame
        timeout = self.settings.request_timeout_s
        while True:
            if self.admission and (refused := (await self.admitted() if isinstance(frame, Complete) else self.refusal())):
                frame = self._refused_frame(refused)
            if isinstance(frame, (Complete, Error)):
                self.terminal = frame
                yield frame
                return
            if self._one_call and isinstance(frame, Chunk) and frame.tool_calls:
                frame = self._first_call_only(frame)
            if frame is not None:
                yield frame
            nxt = self.flight.pop()
            frame = nxt if nxt is not None else await self._next(timeout)
            if self.abandoned:
                return  # no terminal frame: ``close`` cancels on the node and settles as cancelled
            if self._taps and isinstance(frame, Chunk):
                now = time.perf_counter()
                nbytes = len(frame.text) + len(frame.sealed or "")
                for tap in self._taps:
                    tap.chunk(self.job, now - last, nbytes)
                last = now

    def _first_call_only(self, frame: Chunk) -> Chunk | None:
        """``parallel_tool_calls`` off: the answer's first tool call passes, any later one is dropped.

        Whatever the node does (one that predates the flag calls as many tools
        as its model writes), the consumer gets one call at most; a chunk left
        with nothing to say is skipped. (A sealed answer's calls are inside
        its ciphertext, out of the coordinator's sight.)
        """
        keep = max(0, 1 - self._calls)
        self._calls += len(frame.tool_calls)
        if len(frame.tool_calls) <= keep:
            return frame
        frame = msgspec.structs.replace(frame, tool_calls=frame.tool_calls[:keep])
        return frame if frame.text or frame.tool_calls or frame.logprobs else None

    def refuse(self) -> None:
        """Admission failed after dispatch: end as failed (settled as such) and cancel the node's work in ``close``."""
        self.refused = True
        self.terminal = None

    def abandon(self) -> None:
        """The consumer hung up: stop waiting for frames now (``frames`` ends; ``close`` cancels)."""
        self.abandoned = True
        for flight in (self.flight, *self._others):
            flight.abandoned = True
            flight.wake.set()

    async def close(self) -> None:
        """End the request exactly once: release, or cancel it on the node, then settle.

        Safe to call from a cancelled scope (a client that went away): the
        cancel and the settlement are shielded so they always happen.
        """
        if self._closed:
            return
        self._closed = True
        self.timing.finished = time.perf_counter()
        with anyio.CancelScope(shield=True):
            for other in self._others:
                await self.fleet.cancel(other.request_id, "client disconnected")
            term = self.terminal
            rid = self.flight.request_id
            stop = None  # why the node must stop now, if it must
            if self.refused:
                stop = "refused at admission"
            elif term is None:
                stop = "client disconnected"
            elif isinstance(term, Error) and term.status == 499:
                stop = "consumer too slow"
            if stop is not None:
                await self.fleet.cancel(rid, stop)
            # The hold is written before it is settled or released (PostgreSQL runs ops side by side).
            if self.admission:
                await self.admitted()
            if self.refused and term is not None:  # refused mid-answer: nothing is charged
                self.fleet.finish(rid, ok=None)
                await _settle(self.hooks, self.job, "failed", None, self.node_id)
            elif term is None:
                await _settle(self.hooks, self.job, "failed" if self.refused else "cancelled", None, self.node_id)
            elif isinstance(term, Complete):
                self.fleet.finish(rid, ok=True)
                await _settle(self.hooks, self.job, "completed", term.usage, self.node_id)
            else:
                self.fleet.finish(rid, ok=False if term.status >= 500 and term.code != "timeout" else None)
                await _settle(self.hooks, self.job, "failed", None, self.node_id)


# Keyed by the hooks' ids; each entry keeps its hooks alive, so no id in a key can be reused by another object.
_TAPS: dict[tuple[int, ...], tuple[list[RequestHook], list[StreamTap]]] = {}


def _taps(hooks: list[RequestHook]) -> list[StreamTap]:
    """The hooks that are also stream taps, worked out once per set of hooks (a Protocol isinstance is slow)."""
    key = tuple(map(id, hooks))
    entry = _TAPS.get(key)
    if entry is None:
        if len(_TAPS) > 64:  # tests build many apps; a long-lived coordinator has one hook list
            _TAPS.clear()
        entry = _TAPS[key] = (list(hooks), [h for h in hooks if isinstance(h, StreamTap)])
    return entry[1]


async def _settle(hooks: list[RequestHook], job: InferenceJob, outcome: Outcome, usage: Usage | None, node_id: str | None) -> None:
    for hook in hooks:
        try:
            await hook.settle(job, outcome, usage, node_id)
        except Exception:  # one hook's failure must not skip the others
            log.exception("settle hook %s failed for %s", type(hook).__name__, job.request_id)


async def start(job: InferenceJob, fleet: Fleet, hooks: list[RequestHook], settings: Settings, timing: Timing | None = None) -> Relay:
    """Admit, route and dispatch a job, and wait for its first frame.

    Returns:
        A relay whose first frame is a chunk or a ``complete``.

    Raises:
        RequestError: refused at admission, no node for the model, or the
            node failed before producing anything (the hold is settled).
    """
    timing = timing or Timing()
    set_request_id(job.request_id)  # every log line from here on (and the X-Request-Id header) carries it
    if fleet.closing:
        # Draining before shutdown (a kept-alive connection): better elsewhere now than cut off in a few seconds.
        raise RequestError(
            503, SHUTTING_DOWN, type="server_error", code="shutting_down",
            headers={"Retry-After": "1"},
        )
    admitted: list[RequestHook] = []
    pending: list[asyncio.Future[None]] = []  # admissions finishing in the background (see BillingHook.admit_early)
    try:
        for hook in hooks:
            early = getattr(hook, "admit_early", None)
            if early is None:
                await hook.admit(job)
            elif (later := await early(job)) is not None:
                pending.append(later)
            admitted.append(hook)
    except BaseException as exc:
        await _settle(admitted, job, "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed", None, None)
        raise
    timing.admitted = time.perf_counter()
    try:
        flight = await fleet.dispatch(
            job.request_id, job.model, job.messages, job.params, prompt_tokens=job.prompt_tokens, sealed=job.sealed
        )
    except NoNodeError as exc:
        await _settle(hooks, job, "failed", None, None)
        if job.sealed is not None:
            raise recipients_unavailable(job.model) from None
        raise (model_unavailable(job.model) if exc.known else model_not_found(job.model)) from None
    except Refused as exc:
        await _settle(hooks, job, "failed", None, None)
        raise refused_error(exc) from None
    except BaseException as exc:  # cancelled: the consumer hung up while queued (``api.adapter.dispatch``)
        await _settle(hooks, job, "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed", None, None)
        raise
    timing.dispatched = time.perf_counter()
    timing.routed = flight.dispatched_at
    relay = Relay(job, flight, fleet, hooks, settings, timing)
    # Admission still finishing (the hold being written) runs beside the node's prefill; the relay
    # checks it as frames pass and waits for it before the answer ends.
    relay.watch_admission(pending)
    try:
        first = await relay.wait_first()
    except BaseException:
        await relay.close()
        raise
    if isinstance(first, Error):
        relay.terminal = first
        await relay.close()
        raise frame_error(first)
    refused = relay.refusal()
    if refused is not None:  # known before anything was relayed: a plain error answer, nothing of the node's
        relay.refuse()
        await relay.close()
        raise refused
    return relay


def recipients_unavailable(model: str) -> RequestError:
    """No node a sealed request is sealed to can take it (gone, fenced, or not serving the model)."""
    return RequestError(
        503,
        f"no recipient of the sealed envelope is connected, attested and serving '{model}'; "
        "fetch fresh keys from /v1/providers/keys and seal again",
        type="server_error",
        code="recipients_unavailable",
        headers={"Retry-After": "2"},
    )


def refused_error(exc: Refused) -> RequestError:
    """A routing refusal as the consumer's error: 429 always carries ``Retry-After``."""
    if exc.status == 429:
        return RequestError(429, exc.reason, type="rate_limit_error", code=exc.code, headers={"Retry-After": str(max(1, exc.retry_after_s))})
    return RequestError(exc.status, exc.reason, code=exc.code, param="max_tokens" if exc.status == 400 else None)


__all__ = [
    "Chunk", "Complete", "Error", "InferenceJob", "Outcome", "Relay", "RequestHook", "StreamTap", "Timing",
    "frame_error", "refused_error", "start",
]
