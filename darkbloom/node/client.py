"""The node's WebSocket session with the coordinator.

Dials out, registers its models, heartbeats with capacity, runs each
``inference_request`` on the matching engine and streams ``chunk`` frames as
tokens are produced, ends each request with ``complete`` or ``error``, obeys
``cancel``, and reconnects with backoff whenever the coordinator goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed

from darkbloom import __version__
from darkbloom.logging_setup import set_request_id
from darkbloom.node.attestation import NodeAttestor, ResponseSealer, complete_frame, open_sealed
from darkbloom.node.backoff import backoff
from darkbloom.node.sender import FrameSender
from darkbloom.node.engine.base import Engine, EngineEvent, Failed, Finished, TextDelta
from darkbloom.node.slots import SlotManager
from darkbloom.protocol.sealed import SealedError
from darkbloom.protocol import (
    MAX_FRAME_BYTES,
    AttestationChallenge,
    Cancel,
    Capacity,
    Chunk,
    Error,
    Frame,
    Hardware,
    Heartbeat,
    InferenceRequest,
    LoadModel,
    LoadModelStatus,
    ModelInfo,
    ProtocolError,
    Register,
    Registered,
    UnloadModel,
    Usage,
    TrustStatus,
    decode,
    decode_many,
)

log = logging.getLogger(__name__)


def provider_ws_url(coordinator: str) -> str:
    """``http://host:port`` -> ``ws://host:port/v1/provider/ws`` (ws URLs pass through)."""
    parts = urlsplit(coordinator if "://" in coordinator else f"http://{coordinator}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path.endswith("/provider/ws") else parts.path.rstrip("/") + "/v1/provider/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class NodeSession:
    """One provider node's connection loop.

    Args:
        coordinator: Coordinator base URL (http, https, ws or wss).
        node_id: This node's stable id.
        slots: The node's model slots (loaded engines and models it can load).
        models: What to advertise (the slots' models, plus any that failed checks).
        hardware: Machine summary for registration.
        attestor: Signs the attestation bundle, challenge answers and receipts,
            and opens sealed requests; without one the node is unattested.
    """

    def __init__(
        self,
        coordinator: str,
        node_id: str,
        slots: SlotManager,
        models: tuple[ModelInfo, ...],
        hardware: Hardware,
        *,
        on_status: Callable[[str], None] | None = None,
        auth_token: str | None = None,
        attestor: NodeAttestor | None = None,
    ) -> None:
        self.url = provider_ws_url(coordinator)
        self.node_id = node_id
        self.slots = slots
        self.engines = slots.engines  # a live view of the loaded engines (the metrics exporter reads it)
        self.models = models
        self.hardware = hardware
        self.on_status = on_status or (lambda msg: log.info("%s", msg))
        self.auth_token = auth_token  # provider token from `darkbloom node login`: links earnings to an account
        self._seq = 0
        self._sender: FrameSender | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self.connected = asyncio.Event()
        self.attestor = attestor
        self.trust: TrustStatus | None = None
        self.draining = False  # stopping: finish what runs, refuse what comes (``drain``)
        self._ws: websockets.ClientConnection | None = None

    def capacity(self) -> Capacity:
        self._seq += 1
        return self.slots.capacity(self._seq, self.hardware.memory_gb)

    async def run_forever(self) -> None:
        """Connect, serve, and reconnect with backoff until cancelled."""
        delays = backoff()
        while True:
            try:
                await self._session()
                reason = "connection closed"
            except (OSError, ConnectionClosed, asyncio.TimeoutError, ProtocolError) as exc:
                reason = f"{exc.__class__.__name__}: {exc}"
            if self.connected.is_set():
                delays = backoff()  # we were registered: start the schedule afresh
                self.connected.clear()
            delay = next(delays)
            self.on_status(f"lost the coordinator ({reason}); reconnecting in {delay:.0f} s")
            await asyncio.sleep(delay)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking requests and wait up to ``timeout_s`` for those running to finish.

        The coordinator hears ``draining`` at once (a heartbeat) and routes
        nothing more here; a request already on its way is refused with a 503,
        which it sends to another node. The session stays up meanwhile, so the
        running requests stream to the end.
        """
        self.draining = True
        ws = self._ws
        if ws is not None and self.connected.is_set():
            with contextlib.suppress(Exception):  # the coordinator may be gone: then there is nothing to finish
                await self._send(ws, self._heartbeat_frame())
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._active() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    def _heartbeat_frame(self) -> Heartbeat:
        active = self._active()
        status = "draining" if self.draining else "serving" if active else "idle"
        return Heartbeat(status=status, active_requests=active, capacity=self.capacity())

    async def _send(self, ws: websockets.ClientConnection, frame: Frame) -> None:
        """Send one frame on ``ws`` (through the session's sender: frames of one turn share a message)."""
        assert self._sender is not None, "sending outside a session"
        await self._sender.send(frame)

    async def _session(self) -> None:
        async with websockets.connect(self.url, max_size=MAX_FRAME_BYTES, open_timeout=10, ping_interval=20, compression=None) as ws:
            self._sender = FrameSender(lambda data: ws.send(data, text=True))
            self._ws = ws
            reg = Register(
                node_id=self.node_id,  # type: ignore[arg-type]
                models=self.models,
                version=__version__,
                hardware=self.hardware,
                capacity=self.capacity(),
                auth_token=self.auth_token,
                public_key=self.attestor.keys.encryption_public if self.attestor else None,
                attestation=self.attestor.bundle() if self.attestor else None,
                frame_batches=True,
            )
            await self._send(ws, reg)
            reply = decode(await asyncio.wait_for(ws.recv(), 30))
            if isinstance(reply, Error):
                raise ProtocolError(f"registration refused: {reply.message}")
            if not isinstance(reply, Registered):
                raise ProtocolError(f"expected registered, got {reply!r}")
            self._sender.batch = reply.frame_batches  # batches only to a coordinator that reads them
            self.connected.set()
            serving = ", ".join(s.model_id for s in self.slots.loaded()) or "nothing loaded yet"
            self.on_status(f"registered with {self.url} as {self.node_id}, serving {serving}")
            heartbeat = asyncio.create_task(self._heartbeat(ws, reply.heartbeat_interval_s))
            try:
                await self._read(ws)
            finally:
                heartbeat.cancel()
                # The coordinator has failed these requests already; stop the work.
                for rid, task in list(self._tasks.items()):
                    self.slots.cancel(rid)
                    task.cancel()
                await asyncio.gather(heartbeat, *self._tasks.values(), return_exceptions=True)
                self._tasks.clear()

    async def _heartbeat(self, ws: websockets.ClientConnection, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._send(ws, self._heartbeat_frame())

    async def _read(self, ws: websockets.ClientConnection) -> None:
        async for data in ws:
            try:
                frames = decode_many(data)
            except ProtocolError as exc:
                log.warning("malformed frame from coordinator ignored: %s", exc)
                continue
            for frame in frames:
                await self._on_frame(ws, frame)

    async def _on_frame(self, ws: websockets.ClientConnection, frame: Frame) -> None:
        """One frame from the coordinator (a batch is handled frame by frame, in order)."""
        if isinstance(frame, InferenceRequest):
            if self.draining:  # sent before the coordinator heard we are stopping: a 5xx sends it elsewhere
                msg = "this node is stopping; send the request to another"
                await self._send(ws, Error(message=msg, code="node_draining", status=503, request_id=frame.request_id))
                return
            task = asyncio.create_task(self._serve(ws, frame))
            self._tasks[frame.request_id] = task
            task.add_done_callback(lambda _t, rid=frame.request_id: self._tasks.pop(rid, None))
        elif isinstance(frame, (LoadModel, UnloadModel)):
            task = asyncio.create_task(self._load_command(ws, frame))
            self._tasks[f"load:{id(task)}"] = task
            task.add_done_callback(lambda t: self._tasks.pop(f"load:{id(t)}", None))
        elif isinstance(frame, Cancel):
            if frame.request_id in self._tasks:
                self._cancelled.add(frame.request_id)  # it may still be waiting for its model to load
            self.slots.cancel(frame.request_id)
            log.info("request %s cancelled by coordinator: %s", frame.request_id, frame.reason)
        elif isinstance(frame, AttestationChallenge) and self.attestor is not None:
            await self._send(ws, self.attestor.answer(frame, list(self.slots.slots), self._active()))
        elif isinstance(frame, TrustStatus):
            if self.trust is None or (frame.status, frame.trust_level) != (self.trust.status, self.trust.trust_level):
                self.on_status(f"coordinator trust: {frame.status} ({frame.trust_level}){': ' + frame.reason if frame.reason else ''}")
            self.trust = frame
        elif isinstance(frame, Error):
            log.warning("coordinator reports: %s", frame.message)

    async def _load_command(self, ws: websockets.ClientConnection, frame: LoadModel | UnloadModel) -> None:
        if isinstance(frame, UnloadModel):
            await self._send(ws, await self.slots.unload(frame.model))
            return
        await self._send(ws, LoadModelStatus(model=frame.model, status="started"))
        status = await self.slots.load(frame.model)
        await self._send(ws, status)
        # The coordinator's admission reads the new slot from the next capacity snapshot; send it now.
        await self._send(ws, self._heartbeat_frame())

    def active_requests(self) -> int:
        """Requests being served now."""
        return self._active()

    def _active(self) -> int:
        return sum(1 for k in self._tasks if not k.startswith("load:"))

    async def _serve(self, ws: websockets.ClientConnection, req: InferenceRequest) -> None:
        set_request_id(req.request_id)  # this task's log lines carry the coordinator's request id
        if req.model not in self.slots.slots:
            await self._send(ws, Error(message=f"model {req.model!r} is not served by this node", code="model_not_found", status=404, request_id=req.request_id))
            return
        if req.sealed is not None and self.attestor is None:
            await self._send(ws, Error(message="this node has no keys to open sealed requests", code="sealed_open_failed", status=400, request_id=req.request_id))
            return
        try:
            messages, params, sealer = open_sealed(req, self.attestor.keys) if self.attestor else (req.messages, req.params, ResponseSealer(None, ""))
        except SealedError as exc:
            await self._send(ws, Error(message=str(exc), code="sealed_open_failed", status=400, request_id=req.request_id))
            return
        try:
            try:
                engine = await self.slots.engine_for(req.model)
            finally:
                cancelled = req.request_id in self._cancelled
                self._cancelled.discard(req.request_id)
            if cancelled:
                await self._send(ws, complete_frame(self.attestor, req, sealer, Usage(), "cancelled"))
                return
            if engine is None:
                reason = self.slots.slots[req.model].error or "it could not be loaded"
                await self._send(ws, Error(message=f"model {req.model!r} is not available on this node: {reason}", code="model_unavailable", status=503, request_id=req.request_id))
                return
            await self._generate(ws, req, engine, messages, params, sealer)
        finally:
            sealer.forget()

    async def _generate(self, ws: websockets.ClientConnection, req: InferenceRequest, engine: Engine, messages, params, sealer: ResponseSealer) -> None:  # type: ignore[no-untyped-def]
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        started = time.perf_counter()
        engine.submit(req.request_id, messages, params, events)
        seq = 0
        while True:
            ev = await events.get()
            if isinstance(ev, TextDelta):
                fields = sealer.chunk_fields(seq, ev.text, ev.tool_calls, ev.logprobs)
                await self._send(ws, Chunk(request_id=req.request_id, seq=seq, tokens=ev.tokens, **fields))  # type: ignore[arg-type]
                seq += 1
            elif isinstance(ev, Finished):
                await self._send(ws, complete_frame(self.attestor, req, sealer, ev.usage, ev.finish_reason, ev.stop_sequence))
                log.info(
                    "request %s done: %s, %d prompt + %d completion tokens in %.2f s",
                    req.request_id, ev.finish_reason, ev.usage.prompt_tokens, ev.usage.completion_tokens, time.perf_counter() - started,
                )
                return
            elif isinstance(ev, Failed):
                await self._send(ws, Error(message=ev.message, code=ev.code, status=ev.status, request_id=req.request_id))  # type: ignore[arg-type]
                return
