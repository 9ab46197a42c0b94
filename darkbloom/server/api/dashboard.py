"""The dashboard API: the admin fleet view, the public network view, and their live event streams.

``GET /v1/admin/fleet`` (admin credential) is every node with its trust,
slots, load, throughput and heartbeat age, every model's routing state, the
network totals and the recent requests. ``GET /v1/network`` (any consumer
key) is the public part: models, how many nodes serve them, capacity and
totals, with no node ids. ``GET /v1/admin/events`` and ``/v1/network/events``
stream the same as server-sent events: a ``snapshot`` on connect and every
few seconds, a ``request`` event as each request settles, and ``node`` events
as nodes join, heartbeat and leave, so a dashboard follows within a second
without polling.

The view functions are pure reads of the fleet and the event bus with the
clocks passed in, so snapshots are deterministic under test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import require_consumer
from darkbloom.server.api.errors import error_response
from darkbloom.server.auth.admin import require_admin
from darkbloom.server.events import WINDOW_BUCKETS, Bucket, EventBus
from darkbloom.server.fleet import Fleet
from darkbloom.server.routing.registry import NodeState

SNAPSHOT_INTERVAL_S = 2.0
"""How often a stream re-sends the whole snapshot (heartbeat ages, sliding windows)."""
RATE_SPAN_S = WINDOW_BUCKETS * 10.0
"""The 429 rate, timeouts and throughput are over the whole window (five minutes)."""
PUBLIC_REQUEST_FIELDS = ("model", "status", "outcome", "ttft_ms", "tokens_per_s", "completion_tokens", "privacy", "ts")


def _age(now: float, then: Any) -> float | None:
    return round(max(0.0, now - then), 1) if isinstance(then, (int, float)) and then > 0 else None


def _trust(node: NodeState, now_mono: float) -> dict[str, Any]:
    """Trust and attestation, read defensively: the attestation work adds these fields to nodes."""
    level = getattr(node, "trust_level", None)
    status = getattr(node, "trust_status", None) or getattr(node, "trust", None)  # routing keeps `trust`
    attested = None
    for name in ("last_attestation", "attested_at", "last_challenge_passed"):
        attested = getattr(node, name, None)
        if attested is not None:
            break
    return {
        "trust_level": level if isinstance(level, str) else None,
        "trust_status": status if isinstance(status, str) else None,
        "attestation_age_s": _age(now_mono, attested),
    }


def _live(fleet: Fleet) -> Counter[tuple[str, str]]:
    """Requests in flight per (node, model), counted by the coordinator itself (not 5 s stale)."""
    return Counter((f.node_id, f.model) for f in fleet.inflight.values())


def node_view(node: NodeState, fleet: Fleet, bus: EventBus, now_mono: float) -> dict[str, Any]:
    """One node as the admin dashboard shows it."""
    live = _live(fleet)
    slots: list[dict[str, Any]] = []
    if node.capacity is not None and node.capacity.slots:
        for s in node.capacity.slots:
            slots.append(
                {
                    "model": s.model,
                    "state": s.state,
                    "running": s.num_running,
                    "waiting": s.num_waiting,
                    "max": s.max_concurrency,
                    "decode_tps": s.observed_decode_tps,
                    "prefill_tps": s.observed_prefill_tps,
                }
            )
    else:
        for m in node.routable_models():
            running = live[(node.node_id, m)]
            slots.append(
                {
                    "model": m,
                    "state": "running" if running else "unreported",
                    "running": running,
                    "waiting": 0,
                    "max": node.max_in_flight(m),
                    "decode_tps": 0.0,
                    "prefill_tps": 0.0,
                }
            )
    reported = max((s["decode_tps"] for s in slots), default=0.0)
    cap = node.capacity
    return {
        "id": node.node_id,
        **_trust(node, now_mono),
        "chip": node.hardware.chip,
        "memory_gb": node.hardware.memory_gb,
        "version": node.version,
        "models": sorted(node.models),
        "slots": slots,
        "active": node.in_flight,
        "max": sum(node.max_in_flight(m) for m in node.routable_models()),
        "decode_tps": reported or round(bus.node_tps.get(node.node_id, 0.0), 1),
        "free_for_load_gb": cap.free_for_load_gb if cap is not None else None,
        "heartbeat_age_s": _age(now_mono, node.last_seen) or 0.0,
        "connected_s": _age(now_mono, node.connected_at) or 0.0,
        "served": node.served,
    }


def _queue_depth(fleet: Fleet, model: str) -> int:
    """Requests waiting in the coordinator's queue for ``model``."""
    depths = getattr(fleet, "queue_depths", None)
    if callable(depths):
        try:
            return int(depths().get(model, 0))
        except Exception:  # a view must not fail because routing changed shape
            return 0
    return 0


def model_view(model: str, fleet: Fleet, bus: EventBus, now_wall: float, *, admin: bool) -> dict[str, Any]:
    """One model's routing state: who serves it, free slots, queue, wait, rejections, with sparkline series."""
    live = _live(fleet)
    nodes = fleet.registry.candidates(model)
    slots = sum(n.max_in_flight(model) for n in nodes)
    free = sum(max(0, n.max_in_flight(model) - live[(n.node_id, model)]) for n in nodes)
    # Waiting: in the coordinator's queue (when routing has one) or dispatched past a node's slots.
    queue = _queue_depth(fleet, model) + sum(max(0, live[(n.node_id, model)] - n.max_in_flight(model)) for n in nodes)
    window = bus.models.get(model)
    span = window.totals(now_wall, RATE_SPAN_S) if window else Bucket(0.0)
    mean_s = span.busy_s / span.completed if span.completed else None
    if free > 0 and queue == 0:
        wait: float | None = 0.0
    elif mean_s is not None and slots:
        wait = round(mean_s * (queue + 1) / slots, 1)
    else:
        wait = None
    view: dict[str, Any] = {
        "model": model,
        "nodes": len(nodes),
        "slots": slots,
        "free_slots": free,
        "queue_depth": queue,
        "est_wait_s": wait,
        "requests": span.requests,
        "rejected": span.rejected,
        "rate_429": round(span.rejected / span.requests, 3) if span.requests else 0.0,
        "timeouts": span.timeouts,
        "failed": span.failed,
        "tokens_per_s": round(span.tokens / RATE_SPAN_S, 1),
        "series": {
            name: window.series(now_wall, name) if window else [0] * WINDOW_BUCKETS
            for name in ("requests", "rejected", "timeouts", "tokens")
        },
    }
    if admin:
        view["node_ids"] = sorted(n.node_id for n in nodes)
    return view


def stats_view(fleet: Fleet, bus: EventBus, earnings_paid: int | None) -> dict[str, Any]:
    t = bus.totals
    return {
        "requests": t.requests,
        "completed": t.completed,
        "failed": t.failed,
        "tokens_served": t.prompt_tokens + t.completion_tokens,
        "completion_tokens": t.completion_tokens,
        "active_nodes": len(fleet.registry.nodes),
        "models": len(fleet.registry.models()),
        "in_flight": len(fleet.inflight),
        "spent_micro_usd": t.cost_micro_usd,
        "earnings_paid_micro_usd": earnings_paid,
    }


def snapshot(
    fleet: Fleet,
    bus: EventBus,
    *,
    admin: bool,
    now_mono: float | None = None,
    now_wall: float | None = None,
    earnings_paid: int | None = None,
) -> dict[str, Any]:
    """The whole dashboard view: the admin one, or the public one without node ids.

    Also the streams' keepalive: one is sent every ``SNAPSHOT_INTERVAL_S``.
    """
    now_mono = fleet.clock() if now_mono is None else now_mono
    now_wall = bus.clock() if now_wall is None else now_wall
    # Models served now, and ones served earlier that still have history; not every name a consumer tried.
    models = sorted(set(fleet.registry.models()) | (set(bus.models) & fleet.registry.known_models))
    recent = list(bus.recent)[-100:]
    out: dict[str, Any] = {
        "view": "admin" if admin else "public",
        "ts": now_wall,
        "models": [model_view(m, fleet, bus, now_wall, admin=admin) for m in models],
        "stats": stats_view(fleet, bus, earnings_paid),
        "recent": recent if admin else [public_request(r) for r in recent],
    }
    if admin:
        out["nodes"] = [
            node_view(n, fleet, bus, now_mono) for n in sorted(fleet.registry.nodes.values(), key=lambda n: n.node_id)
        ]
    return out


def public_request(record: dict[str, Any]) -> dict[str, Any]:
    """A finished request without anything that names a node or a consumer."""
    return {k: record.get(k) for k in PUBLIC_REQUEST_FIELDS}


def sse_event(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _earnings(request: Request) -> int | None:
    """Provider earnings paid, when billing registers ``app.state.earnings_paid`` (an async callable)."""
    probe = getattr(request.app.state, "earnings_paid", None)
    if probe is None:
        return None
    try:
        value = await probe()
        return int(value) if value is not None else None
    except Exception:
        return None


async def _snapshot(request: Request, admin: bool) -> dict[str, Any]:
    return snapshot(
        request.app.state.fleet, request.app.state.events, admin=admin, earnings_paid=await _earnings(request)
    )


async def admin_fleet(request: Request) -> Response:
    try:
        require_admin(request)
    except RequestError as err:
        return error_response(err)
    return JSONResponse(await _snapshot(request, admin=True))


async def network(request: Request) -> Response:
    try:
        await require_consumer(request)
    except RequestError as err:
        return error_response(err)
    return JSONResponse(await _snapshot(request, admin=False))


async def admin_events(request: Request) -> Response:
    try:
        require_admin(request)
    except RequestError as err:
        return error_response(err)
    return _stream(request, admin=True)


async def network_events(request: Request) -> Response:
    try:
        await require_consumer(request)
    except RequestError as err:
        return error_response(err)
    return _stream(request, admin=False)


def _stream(request: Request, *, admin: bool) -> StreamingResponse:
    fleet: Fleet = request.app.state.fleet
    bus: EventBus = request.app.state.events

    async def events() -> AsyncIterator[bytes]:
        # Subscribe before the first snapshot so nothing falls between the two.
        with bus.subscribe() as sub:
            yield sse_event("snapshot", await _snapshot(request, admin))
            next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL_S
            while True:
                try:
                    event = await asyncio.wait_for(sub.get(), max(0.0, next_snapshot - time.monotonic()))
                except TimeoutError:
                    yield sse_event("snapshot", await _snapshot(request, admin))
                    next_snapshot = time.monotonic() + SNAPSHOT_INTERVAL_S
                    continue
                if event["type"] == "request":
                    yield sse_event("request", event if admin else public_request(event))
                elif admin:
                    node = fleet.registry.nodes.get(event["node"])
                    view = (
                        node_view(node, fleet, bus, fleet.clock())
                        if node is not None and event["kind"] != "left"
                        else None
                    )
                    yield sse_event("node", {**event, "view": view})
                elif event["kind"] != "heartbeat":
                    # Public watchers learn of joins and departures as a fresh snapshot, without node ids.
                    yield sse_event("snapshot", await _snapshot(request, admin))

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
