"""WebSocket endpoint for provider nodes: ``/v1/provider/ws``.

The first frame must be ``register``; then heartbeats and per-request frames
flow in, and the coordinator sends ``inference_request`` and ``cancel`` out.
A malformed frame earns an ``error`` frame and is otherwise ignored: the
connection stays usable, and no other connection is affected.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from darkbloom.protocol import (
    PROTOCOL_VERSION,
    AttestationResponse,
    Chunk,
    Complete,
    Error,
    Frame,
    Heartbeat,
    LoadModelStatus,
    ProtocolError,
    Register,
    Registered,
    decode,
    decode_many,
    encode,
)
from darkbloom.protocol.sealed import AttestationError
from darkbloom.server.attestation import AttestationService
from darkbloom.server.fleet import SHUTTING_DOWN, Fleet, NodeLink

log = logging.getLogger(__name__)

REGISTER_TIMEOUT_S = 30.0


def _publish(ws: WebSocket, kind: str, node_id: str, reason: str = "") -> None:
    """Tell the dashboard's event bus (when the app has one) about a node."""
    events = getattr(ws.app.state, "events", None)
    if events is not None:
        events.node_event(kind, node_id, reason)


async def _recv(ws: WebSocket) -> bytes | None:
    msg = await ws.receive()
    if msg["type"] == "websocket.disconnect":
        return None
    data = msg.get("bytes")
    if data is None:
        data = (msg.get("text") or "").encode()
    return data


async def provider_socket(ws: WebSocket) -> None:
    fleet: Fleet = ws.app.state.fleet
    await ws.accept()
    try:
        first = await asyncio.wait_for(_recv(ws), REGISTER_TIMEOUT_S)
    except (asyncio.TimeoutError, WebSocketDisconnect):
        await ws.close(code=1008, reason="no register frame")
        return
    if first is None:
        return
    try:
        frame = decode(first)
    except ProtocolError as exc:
        await ws.send_bytes(encode(Error(message=f"malformed register frame: {exc}", code="bad_frame", status=400)))
        await ws.close(code=1008, reason="first frame must be a valid register frame")
        return
    if not isinstance(frame, Register):
        await ws.close(code=1008, reason=f"first frame must be register, got {type(frame).__name__}")
        return
    if frame.protocol_version != PROTOCOL_VERSION:
        await ws.close(code=1008, reason=f"protocol version {frame.protocol_version} unsupported; coordinator speaks {PROTOCOL_VERSION}")
        return
    attestation: AttestationService = ws.app.state.attestation
    try:
        trust = attestation.admit(frame)
    except AttestationError as exc:
        log.warning("refused node %s: %s", frame.node_id, exc)
        await ws.send_bytes(encode(Error(message=f"attestation rejected: {exc}", code="attestation_invalid", status=403)))
        await ws.close(code=1008, reason="attestation rejected")
        return
    node_id = frame.node_id
    if node_id in fleet.links:
        # A reconnect that beat our noticing the old socket's death: the new one wins.
        await fleet.detach(node_id, "provider reconnected")
    now = fleet.clock()
    state = fleet.registry.add(node_id, frame.models, frame.hardware, now, version=frame.version, capacity=frame.capacity)
    attestation.attach(state, trust)
    link = NodeLink(node_id=node_id, send_bytes=ws.send_bytes, close=ws.close, batch=frame.frame_batches)
    fleet.attach(link)
    if frame.auth_token:
        await _link_provider(ws, link, frame.auth_token)
    _publish(ws, "joined", node_id)
    log.info("node %s registered with models %s (trust: %s)", node_id, [m.id for m in frame.models], trust.trust_level if trust else "none")

    async def close(reason: str) -> None:
        log.warning("closing node %s: %s", node_id, reason)
        await ws.close(code=1008, reason=reason[:120])

    try:
        await link.send(Registered(node_id=node_id, heartbeat_interval_s=ws.app.state.settings.heartbeat_interval_s, frame_batches=True))
        if trust is not None:
            attestation.start(node_id, link, close)
        await _serve(ws, fleet, link)
    except (WebSocketDisconnect, RuntimeError):  # RuntimeError: the socket was closed under us (attestation)
        pass
    finally:
        if trust is not None:
            await attestation.stop(node_id, trust)
        if fleet.links.get(node_id) is link:
            # When the coordinator stops, uvicorn closes this socket itself: say so, rather than blame the node.
            reason = SHUTTING_DOWN if fleet.closing else "provider disconnected"
            await fleet.detach(node_id, reason, close_socket=False)
            _publish(ws, "left", node_id, "disconnected")
        log.info("node %s disconnected", node_id)


async def _link_provider(ws: WebSocket, link: NodeLink, token: str) -> None:
    """Credit the node's earnings to the account its provider token (from ``darkbloom node login``) names."""
    import time

    from darkbloom.server.auth.device import link_registered_node

    try:
        account = await link_registered_node(ws.app.state.store, link.node_id, token, time.time())
    except Exception:
        log.exception("could not link node %s to its account", link.node_id)
        return
    if account is None:
        log.warning("node %s sent an unknown provider token; its earnings stay unlinked", link.node_id)
    else:
        log.info("node %s earns for account %s", link.node_id, account)


async def _serve(ws: WebSocket, fleet: Fleet, link: NodeLink) -> None:
    node_id = link.node_id
    while True:
        data = await _recv(ws)
        if data is None:
            return
        try:
            frames = decode_many(data)
        except ProtocolError as exc:
            log.warning("node %s sent a malformed frame: %s", node_id, exc)
            await link.send(Error(message=f"malformed frame ignored: {exc}", code="bad_frame", status=400))
            continue
        for frame in frames:  # a batch (every token of one decode step, say) in the order it was sent
            if isinstance(frame, (Chunk, Complete)):
                fleet.deliver(node_id, frame.request_id, frame)
            else:
                await _on_frame(ws, fleet, link, frame)


async def _on_frame(ws: WebSocket, fleet: Fleet, link: NodeLink, frame: Frame) -> None:
    """Any frame from a node but the per-request stream (chunks and completions)."""
    node_id = link.node_id
    if isinstance(frame, Error):
        if frame.request_id is not None:
            fleet.deliver(node_id, frame.request_id, frame)
        else:
            log.warning("node %s reports: %s", node_id, frame.message)
    elif isinstance(frame, AttestationResponse):
        await ws.app.state.attestation.on_answer(node_id, frame, link)
    elif isinstance(frame, Heartbeat):
        fleet.heartbeat(node_id, frame.capacity, frame.status)
        _publish(ws, "heartbeat", node_id)
    elif isinstance(frame, LoadModelStatus):
        fleet.load_status(node_id, frame.model, frame.status)
    else:
        await link.send(Error(message=f"unexpected {type(frame).__name__} frame from a node", code="bad_frame", status=400))
