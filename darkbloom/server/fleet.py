"""The live fleet: node WebSocket connections and the requests in flight on them.

This is the async shell around the pure ``Registry``: it owns the sockets and
one asyncio queue per in-flight request, onto which the provider socket
handler puts that request's frames in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from darkbloom.protocol import Cancel, ChatMessage, Error, Frame, InferenceRequest, SamplingParams, encode
from darkbloom.server.routing.registry import Registry

log = logging.getLogger(__name__)

SendBytes = Callable[[bytes], Awaitable[None]]


@dataclass
class NodeLink:
    """One node's socket: a single writer so frames are never interleaved."""

    node_id: str
    send_bytes: SendBytes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requests: set[str] = field(default_factory=set)

    async def send(self, frame: Frame) -> None:
        data = encode(frame)
        async with self.lock:
            await self.send_bytes(data)


@dataclass
class InFlight:
    """A request dispatched to a node; its frames arrive on ``frames``."""

    request_id: str
    model: str
    node_id: str
    frames: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    dispatched_at: float = field(default_factory=time.perf_counter)
    done: bool = False


class NoNodeError(Exception):
    """No connected node serves the model (``known`` says whether any ever did)."""

    def __init__(self, model: str, known: bool) -> None:
        super().__init__(model)
        self.model = model
        self.known = known


class Fleet:
    """Connected nodes, their registry entries, and in-flight requests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = Registry()
        self.links: dict[str, NodeLink] = {}
        self.inflight: dict[str, InFlight] = {}
        self.clock = clock

    def attach(self, link: NodeLink) -> None:
        self.links[link.node_id] = link

    async def detach(self, node_id: str, reason: str = "provider disconnected") -> None:
        """Forget a node and fail each of its in-flight requests with a 502."""
        link = self.links.pop(node_id, None)
        self.registry.remove(node_id)
        if link is None:
            return
        for rid in list(link.requests):
            flight = self.inflight.get(rid)
            if flight is not None:
                flight.frames.put_nowait(Error(message=reason, code="provider_error", status=502, request_id=rid))

    async def dispatch(self, request_id: str, model: str, messages: tuple[ChatMessage, ...], params: SamplingParams) -> InFlight:
        """Route a request to a node and send it.

        Raises:
            NoNodeError: no connected node serves ``model``.
        """
        node = self.registry.pick(model)
        if node is None or node.node_id not in self.links:
            raise NoNodeError(model, model in self.registry.known_models)
        link = self.links[node.node_id]
        flight = InFlight(request_id=request_id, model=model, node_id=node.node_id)
        self.inflight[request_id] = flight
        link.requests.add(request_id)
        node.in_flight += 1
        node.served += 1
        try:
            await link.send(InferenceRequest(request_id=request_id, model=model, messages=messages, params=params))
        except Exception:
            self.finish(request_id)
            raise
        return flight

    def deliver(self, node_id: str, request_id: str, frame: Frame) -> bool:
        """Hand a frame from a node to its request; False if the request is unknown."""
        flight = self.inflight.get(request_id)
        if flight is None or flight.node_id != node_id:
            return False
        flight.frames.put_nowait(frame)
        return True

    def finish(self, request_id: str) -> None:
        """Release a request's slot on its node; idempotent."""
        flight = self.inflight.pop(request_id, None)
        if flight is None:
            return
        flight.done = True
        link = self.links.get(flight.node_id)
        if link is not None:
            link.requests.discard(request_id)
        node = self.registry.nodes.get(flight.node_id)
        if node is not None:
            node.in_flight = max(0, node.in_flight - 1)

    async def cancel(self, request_id: str, reason: str) -> None:
        """Tell the node to stop a request and release it here."""
        flight = self.inflight.get(request_id)
        if flight is None:
            return
        link = self.links.get(flight.node_id)
        self.finish(request_id)
        if link is not None:
            try:
                await link.send(Cancel(request_id=request_id, reason=reason))
            except Exception as exc:  # the socket is going away; detach handles the rest
                log.info("cancel for %s not sent: %s", request_id, exc)
