"""The live fleet: node sockets, requests in flight, the queue's waiters.

This is the async shell around the pure routing state
(``darkbloom.server.routing``): it owns each node's two-lane writer, one
frame buffer per in-flight request, and the futures of queued requests. Every
decision (where a request goes, whether it queues or gets a 429, which queued
request goes next, which node loads a model) is made by the pure code with
``clock()`` passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from dataclasses import dataclass, field

from darkbloom.aio import spawn
from darkbloom.protocol import Cancel, Capacity, ChatMessage, Error, Frame, InferenceRequest, LoadModel, SamplingParams
from darkbloom.protocol.frames import SealedEnvelope
from darkbloom.server.routing.hedging import hedge_delay_s
from darkbloom.server.routing.registry import Registry
from darkbloom.server.routing.scoring import ewma
from darkbloom.server.routing.route import Dispatch, Enqueue, NoNode, Reject, drain, route
from darkbloom.server.routing.state import FleetState, RouteRequest, RoutingConfig
from darkbloom.server.routing.warmpool import load_finished, plan_warm_pool
from darkbloom.server.wake import Deadline, Wake
from darkbloom.server.writer import NodeWriter, WriterClosed, WriterLimits

log = logging.getLogger(__name__)

SendBytes = Callable[[bytes], Awaitable[None]]

SLOW_CONSUMER_GRACE_S = 0.25
"""How long a request's buffer may stay over its limit before the request ends with 499."""
BUFFER_FRAMES = 1024
"""Frames a request may have waiting for its consumer (a 1k-token answer at one token a frame)."""
SHUTTING_DOWN = "coordinator shutting down; retry the request"
"""What a request refused or cut off while the coordinator stops is told (``Fleet.closing``)."""


class NoNodeError(Exception):
    """No connected node serves the model (``known`` says whether any ever did)."""

    def __init__(self, model: str, known: bool) -> None:
        super().__init__(model)
        self.model = model
        self.known = known


class Refused(Exception):
    """Routing refused the request at once: 429 (queue full, wait too long, queue timeout) or 400."""

    def __init__(self, status: int, code: str, reason: str, retry_after_s: int = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass
class NodeLink:
    """One node's socket: all writes go through its two-lane ``NodeWriter``."""

    node_id: str
    send_bytes: SendBytes
    close: Callable[[], Awaitable[None]] | None = None
    limits: WriterLimits = field(default_factory=WriterLimits)
    batch: bool = False
    """The node reads frame batches (``Register.frame_batches``)."""
    requests: set[str] = field(default_factory=set)
    writer: NodeWriter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = NodeWriter(self.send_bytes, limits=self.limits, batch=self.batch)

    async def send(self, frame: Frame) -> None:
        await self.writer.send(frame)

    def lane_depths(self) -> dict[str, int]:
        """Frames waiting in this node's writer, per lane (read by the metrics collector)."""
        control, data = self.writer.pending()
        return {"control": control, "data": data}


class InFlight:
    """A request dispatched to a node; its frames wait here, in arrival order, for the consumer."""

    __slots__ = ("request_id", "model", "node_id", "expected_ttft_s", "prompt_tokens", "seen_first", "dispatched_at", "done", "wake", "privacy", "_buf", "_limit", "_overflow", "_on_overflow", "_deadline", "_timed_out", "abandoned")

    def __init__(self, request_id: str, model: str, node_id: str, limit: int = BUFFER_FRAMES, on_overflow: Callable[[InFlight], None] | None = None) -> None:
        self.request_id = request_id
        self.model = model
        self.node_id = node_id
        self.expected_ttft_s = 0.0
        self.prompt_tokens = 0
        self.seen_first = False
        self.dispatched_at = time.perf_counter()
        self.done = False
        self.wake = Wake()  # shared between a request and its hedge
        self.privacy: Any = None  # server/attestation FlightPrivacy: sealing mode, chunk key, sealed hash
        self._buf: deque[Frame] = deque()
        self._limit = limit
        self._overflow: asyncio.TimerHandle | None = None
        self._on_overflow = on_overflow
        # ``next``'s timeout: one lazily re-armed timer per flight, not one per frame.
        self._deadline = Deadline(self._expired)
        self._timed_out = False
        self.abandoned = False  # the consumer hung up: ``next`` stops waiting

    def push(self, frame: Frame) -> None:
        self._buf.append(frame)
        self.wake.set()
        if len(self._buf) > self._limit and self._overflow is None and self._on_overflow is not None:
            self._overflow = asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE_S, self._grace_over)

    def _grace_over(self) -> None:
        self._overflow = None
        if len(self._buf) > self._limit and not self.done and self._on_overflow is not None:
            self._on_overflow(self)

    def pending(self) -> int:
        return len(self._buf)

    def pop(self) -> Frame | None:
        return self._buf.popleft() if self._buf else None

    async def next(self, timeout: float) -> Frame | None:
        """The next frame, or None after ``timeout`` seconds without one (or once ``abandoned``)."""
        if self._buf:
            return self._buf.popleft()
        self._timed_out = False
        self._deadline.set(self.wake.running_loop(), timeout)
        try:
            while not self._buf:
                if self._timed_out or self.abandoned:
                    self._timed_out = False
                    return None
                self.wake.clear()
                await self.wake.wait()
        finally:
            self._deadline.clear()  # nobody is waiting: a timer that fires now just lapses
        return self._buf.popleft()

    def _expired(self) -> None:
        self._timed_out = True
        self.wake.set()

    def stop_timers(self) -> None:
        """The flight is over: drop timers nobody waits on, so nothing holds it until they would fire."""
        if not self._deadline.armed:
            self._deadline.cancel()
        if self._overflow is not None:
            self._overflow.cancel()
            self._overflow = None

    @property
    def frames(self) -> InFlight:  # the old queue attribute: tests put frames with put_nowait
        return self

    def put_nowait(self, frame: Frame) -> None:
        self.push(frame)


def estimate_prompt_tokens(messages: tuple[ChatMessage, ...]) -> int:
    """A tokenizer-free estimate (about 4 characters a token, plus per-message framing)."""
    return sum(len(m.content) for m in messages) // 4 + 4 * len(messages)


class Fleet:
    """Connected nodes, in-flight requests and queued ones, around one ``FleetState``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, config: RoutingConfig | None = None) -> None:
        self.state = FleetState(config or RoutingConfig())
        self.registry: Registry = self.state.registry
        self.links: dict[str, NodeLink] = {}
        self.inflight: dict[str, InFlight] = {}
        self.closing = False  # the coordinator is shutting down (``runner.CoordinatorServer``): see SHUTTING_DOWN
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self.clock = clock
        self.privacy: Any = None  # server/attestation PrivacyRelay (set by the app): seals, opens, checks receipts

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run ``coro`` in the background (cancels, load orders, drops)."""
        spawn(coro)

    @property
    def config(self) -> RoutingConfig:
        return self.state.config

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting for a slot, per model (read by the metrics collector)."""
        return {model: len(q) for model, q in self.state.queues.items()}

    # ---- nodes ----------------------------------------------------------------------

    def attach(self, link: NodeLink) -> None:
        """A registered node's socket is ready: start its writer, let queued requests at it."""
        self.links[link.node_id] = link
        link.writer.on_stuck = lambda reason, nid=link.node_id, lk=link: self._stuck(nid, lk, reason)
        link.writer.start()
        node = self.registry.nodes.get(link.node_id)
        if node is not None:
            self._drain_models(node.slots)

    def _stuck(self, node_id: str, link: NodeLink, reason: str) -> None:
        async def drop() -> None:
            if self.links.get(node_id) is link:
                await self.detach(node_id, "provider disconnected")
            elif link.close is not None:
                with contextlib.suppress(Exception):
                    await link.close()

        self._spawn(drop())

    async def detach(self, node_id: str, reason: str = "provider disconnected", *, close_socket: bool = True) -> None:
        """Forget a node and fail each of its in-flight requests with a 502.

        Args:
            close_socket: Also close the node's socket (evicted, replaced, or
                stuck); False when the socket is already gone.
        """
        link = self.links.pop(node_id, None)
        node = self.registry.remove(node_id)
        if link is not None:
            await link.writer.close()
            if close_socket and link.close is not None:
                with contextlib.suppress(Exception):  # already closing from the other side
                    await link.close()
            for rid in list(link.requests):
                flight = self.inflight.get(rid)
                if flight is not None:
                    flight.push(Error(message=reason, code="provider_error", status=502, request_id=rid))  # type: ignore[arg-type]
                self.state.release(rid, self.clock(), ok=None)
        if node is not None:
            self._drain_models(node.slots)

    def heartbeat(self, node_id: str, capacity: Capacity | None, status: str = "serving") -> bool:
        """Record a heartbeat; new capacity may let queued requests go (a ``draining`` node takes no more)."""
        fresh = self.registry.heartbeat(node_id, capacity, self.clock(), status)
        node = self.registry.nodes.get(node_id)
        if fresh and capacity is not None and node is not None:
            self._drain_models(node.slots)
        return fresh

    def load_status(self, node_id: str, model: str, status: str) -> None:
        if status in ("loaded", "load_failed"):
            load_finished(self.state, node_id, model, status == "loaded", self.clock())

    # ---- requests ---------------------------------------------------------------------

    async def dispatch(
        self,
        request_id: str,
        model: str,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        *,
        prompt_tokens: int | None = None,
        exclude: frozenset[str] = frozenset(),
        queue: bool = True,
        sealed: SealedEnvelope | None = None,
    ) -> InFlight:
        """Route a request, waiting in the model's queue if need be, and send it.

        Raises:
            NoNodeError: no connected node serves ``model``.
            Refused: 429 (queue full, estimated wait too long, or queue
                timeout; with a Retry-After), 400 (never fits), or, with
                ``queue=False``, no room right now.
        """
        tokens = prompt_tokens if prompt_tokens is not None else estimate_prompt_tokens(messages)
        only = frozenset(sealed.recipients) if sealed is not None else None
        req = RouteRequest(
            request_id, model, tokens, params.max_tokens, exclude,
            needs_tools=params.tools is not None, needs_json=params.response_format is not None,
            needs_tool_choice=params.tool_required, needs_logprobs=params.top_logprobs is not None, only=only,
        )
        while True:
            decision = route(req, self.state, self.clock())
            if isinstance(decision, Dispatch):
                self.state.commit(req, decision.node_id, self.clock())
                node_id, ttft = decision.node_id, decision.expected_ttft_s
            elif isinstance(decision, NoNode):
                raise NoNodeError(model, decision.known)
            elif isinstance(decision, Reject):
                if decision.status == 429:
                    self.state.note_refused(model)
                raise Refused(decision.status, decision.code, decision.reason, decision.retry_after_s)
            else:
                assert isinstance(decision, Enqueue)
                if not queue:
                    raise Refused(429, "rate_limit_exceeded", "no room", self.state.retry_after(model))
                node_id, ttft = await self._wait_in_queue(req), 0.0
            link = self.links.get(node_id)
            if link is None or link.writer.closed:
                self.state.release(request_id, self.clock())
                continue  # the node left between routing and sending: route again
            flight = InFlight(request_id, model, node_id, on_overflow=self._slow_consumer)
            flight.expected_ttft_s = ttft
            flight.prompt_tokens = tokens
            self.inflight[request_id] = flight
            link.requests.add(request_id)
            try:
                frame = InferenceRequest(request_id=request_id, model=model, messages=messages, params=params, sealed=sealed)  # type: ignore[arg-type]
                if self.privacy is not None:
                    frame, flight.privacy = self.privacy.outgoing(self.registry.nodes.get(node_id), frame)
                await link.send(frame)
            except WriterClosed:
                self.finish(request_id)
                continue
            except BaseException:
                await self.cancel(request_id, "dispatch interrupted")
                raise
            return flight

    async def _wait_in_queue(self, req: RouteRequest) -> str:
        self.state.enqueue(req, self.clock())
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[req.request_id] = fut
        self._plan_warm_pool()
        try:
            return await fut
        except BaseException:
            # Cancelled (client left) or timed out: leave the queue; give back a slot granted meanwhile.
            self._waiters.pop(req.request_id, None)
            self.state.dequeue(req.request_id, req.model)
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.state.release(req.request_id, self.clock())
                self._drain_models((req.model,))
            raise

    def _drain_models(self, models: object) -> None:
        now = self.clock()
        for model in list(models):  # type: ignore[call-overload]
            if not self.state.depth(model):
                continue
            for req, decision in drain(self.state, model, now):
                fut = self._waiters.pop(req.request_id, None)
                if fut is None or fut.done():
                    self.state.release(req.request_id, now)
                else:
                    fut.set_result(decision.node_id)

    def hedge_delay_s(self, flight: InFlight) -> float:
        """Seconds after dispatch at which ``flight`` gets a speculative twin (inf: never)."""
        cfg = self.config.hedge
        return hedge_delay_s(flight.expected_ttft_s, cfg) if cfg.enabled else float("inf")

    def may_hedge(self, model: str) -> bool:
        return self.state.governor.allow(self.state.depth(model), len(self.registry.available.get(model, ())))

    def expire_queued(self) -> int:
        """Fail queued requests past the queue timeout with 429; returns how many."""
        expired = self.state.expire(self.clock())
        for waiter in expired:
            fut = self._waiters.pop(waiter.request_id, None)
            if fut is not None and not fut.done():
                secs = self.config.queue_timeout_s
                fut.set_exception(Refused(429, "rate_limit_exceeded", f"no capacity for {waiter.model} within {secs:.0f} s", self.state.retry_after(waiter.model)))
        return len(expired)

    def _plan_warm_pool(self) -> None:
        for plan in plan_warm_pool(self.state, self.clock()):
            link = self.links.get(plan.node_id)
            if link is not None:
                log.info("warm pool: asking node %s to load %s", plan.node_id, plan.model)
                self._spawn(self._send_quietly(link, LoadModel(model=plan.model)))

    async def _send_quietly(self, link: NodeLink, frame: Frame) -> None:
        try:
            await link.send(frame)
        except WriterClosed as exc:
            log.info("%s for node %s not sent: %s", type(frame).__name__, link.node_id, exc)

    async def run(self, tick_s: float = 0.25) -> None:
        """Background upkeep until cancelled: queue timeouts every tick, the warm pool every ``warm_tick_s``."""
        last_warm = self.clock()
        while True:
            await asyncio.sleep(tick_s)
            self.expire_queued()
            if self.clock() - last_warm >= self.config.warm_tick_s:
                last_warm = self.clock()
                self._plan_warm_pool()

    def set_trust(self, node_id: str, trust: str) -> None:
        """Apply an attestation verdict (``trusted`` / ``fenced`` / ``untrusted``); a node trusted again takes queued work."""
        self.registry.set_trust(node_id, trust)
        node = self.registry.nodes.get(node_id)
        if trust == "trusted" and node is not None:
            self._drain_models(node.slots)

    def deliver(self, node_id: str, request_id: str, frame: Frame) -> bool:
        """Hand a frame from a node to its request; False if the request is unknown or over."""
        flight = self.inflight.get(request_id)
        if flight is None or flight.node_id != node_id or flight.done:
            return False
        if self.privacy is not None:
            frame = self.privacy.incoming(self.registry.nodes.get(node_id), flight, frame)
        flight.push(frame)
        if not flight.seen_first:
            flight.seen_first = True
            self._measure_first(flight)
        if isinstance(frame, Error) and frame.feasible_after_ms:
            self.state.model_stats(flight.model).feasible_after_ms = frame.feasible_after_ms
        return True

    def _measure_first(self, flight: InFlight) -> None:
        """Fold a first frame's timing into the node's reputation and round-trip estimate."""
        node = self.registry.nodes.get(flight.node_id)
        if node is None:
            return
        ttft = time.perf_counter() - flight.dispatched_at
        node.reputation.record_ttft(ttft)
        slot = node.slots.get(flight.model)
        prefill = flight.prompt_tokens / slot.rates.prefill() if slot is not None else 0.0
        # What the prefill estimate does not explain is the round trip (and queueing we could not see).
        node.rtt_s = ewma(node.rtt_s, max(1e-4, ttft - prefill))

    def _slow_consumer(self, flight: InFlight) -> None:
        log.info("request %s: consumer too slow for %.0f ms; ending it with 499", flight.request_id, SLOW_CONSUMER_GRACE_S * 1000)
        flight.push(Error(message="consumer too slow to read the stream", code="client_too_slow", status=499, request_id=flight.request_id))  # type: ignore[arg-type]
        self._spawn(self.cancel(flight.request_id, "consumer too slow"))

    def finish(self, request_id: str, ok: bool | None = None) -> None:
        """Release a request's reservation and let the queue move; idempotent.

        Args:
            ok: True completed, False failed on the node, None says nothing about the node.
        """
        flight = self.inflight.pop(request_id, None)
        if flight is None:
            return
        flight.done = True
        flight.stop_timers()
        if flight.privacy is not None:
            flight.privacy.forget()
        link = self.links.get(flight.node_id)
        if link is not None:
            link.requests.discard(request_id)
        if self.state.release(request_id, self.clock(), ok) is not None:
            self._drain_models((flight.model,))

    async def cancel(self, request_id: str, reason: str) -> None:
        """Tell the node to stop a request (control lane) and release it here."""
        flight = self.inflight.get(request_id)
        if flight is None:
            return
        link = self.links.get(flight.node_id)
        self.finish(request_id)
        if link is not None:
            await self._send_quietly(link, Cancel(request_id=request_id, reason=reason))  # type: ignore[arg-type]
