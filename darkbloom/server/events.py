"""The coordinator's live event bus: finished requests and nodes coming and going.

The dashboard's event streams subscribe here. The gateway feeds it through
``DashboardHook`` (a ``RequestHook``: it stamps admission and the first frame
and publishes one ``request`` event at settlement); the provider socket
publishes ``node`` events when a node registers, heartbeats or leaves.

Everything is in memory and bounded: a slow subscriber loses its oldest
events rather than growing without limit, and the per-model windows keep a
fixed number of time buckets. The clock is passed in so tests and the
dashboard snapshots are deterministic.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from darkbloom.protocol import Error, Frame, Usage
from darkbloom.protocol.openai import RequestError

log = logging.getLogger(__name__)

BUCKET_S = 10.0
"""Width of one time bucket in the per-model windows (a sparkline point)."""
WINDOW_BUCKETS = 30
"""Buckets kept per model: five minutes of history at 10 s each."""
RECENT_REQUESTS = 200
MAX_MODEL_WINDOWS = 256
"""Consumers can name any model; the windows kept for them are bounded (least recently used go)."""
SUBSCRIBER_QUEUE = 1000

CostFn = Callable[[Any, Usage | None], "int | None"]


@dataclass
class Bucket:
    """What happened to one model's requests during one ``BUCKET_S`` interval."""

    start: float
    requests: int = 0
    completed: int = 0
    rejected: int = 0  # 429: rate limited or the queue was too long
    timeouts: int = 0  # 504: no first token in time, queue wait exceeded
    failed: int = 0
    tokens: int = 0
    busy_s: float = 0.0  # summed request durations, for the estimated wait


@dataclass
class ModelWindow:
    """The last ``WINDOW_BUCKETS`` buckets of one model, oldest first."""

    buckets: deque[Bucket] = field(default_factory=lambda: deque(maxlen=WINDOW_BUCKETS))

    def bucket(self, now: float) -> Bucket:
        start = now - (now % BUCKET_S)
        if not self.buckets or self.buckets[-1].start < start:
            self.buckets.append(Bucket(start))
        return self.buckets[-1]

    def series(self, now: float, attr: str, points: int = WINDOW_BUCKETS) -> list[int]:
        """``attr`` per bucket for the last ``points`` buckets ending now; empty buckets are 0."""
        last = now - (now % BUCKET_S)
        by_start = {b.start: getattr(b, attr) for b in self.buckets}
        return [by_start.get(last - i * BUCKET_S, 0) for i in range(points - 1, -1, -1)]

    def totals(self, now: float, span_s: float) -> Bucket:
        """The buckets of the last ``span_s`` seconds (the current one included) summed into one."""
        first = now - (now % BUCKET_S) - (round(span_s / BUCKET_S) - 1) * BUCKET_S
        out = Bucket(first)
        for b in self.buckets:
            if b.start >= first:
                for name in ("requests", "completed", "rejected", "timeouts", "failed", "tokens", "busy_s"):
                    setattr(out, name, getattr(out, name) + getattr(b, name))
        return out


@dataclass
class Totals:
    """Network totals since the coordinator started."""

    requests: int = 0
    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0


class Subscription:
    """One listener's queue of events; the oldest are dropped when it falls behind."""

    def __init__(self, bus: EventBus, maxsize: int = SUBSCRIBER_QUEUE) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, event: dict[str, Any]) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()

    def close(self) -> None:
        self.bus.subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of dashboard events plus the short history the dashboard shows.

    Args:
        clock: Wall-clock seconds (``time.time``); stamps events and buckets.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.subscribers: set[Subscription] = set()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
        self.models: dict[str, ModelWindow] = {}
        self.totals = Totals()
        self.node_tps: dict[str, float] = {}  # EWMA of observed decode tokens/s per node

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self.subscribers.add(sub)
        return sub

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            sub.put(event)

    def node_event(self, kind: str, node_id: str, reason: str = "") -> None:
        """A node ``joined``, ``left`` or sent a ``heartbeat``."""
        if kind == "left":
            self.node_tps.pop(node_id, None)
        self.publish({"type": "node", "kind": kind, "node": node_id, "reason": reason, "ts": self.clock()})

    def request_finished(self, record: dict[str, Any], duration_s: float) -> None:
        """Count a settled request into the totals and its model's window, then publish it."""
        now = self.clock()
        record = {"type": "request", "ts": now, **record}
        status = int(record["status"])
        tokens = int(record.get("completion_tokens") or 0)
        t = self.totals
        t.requests += 1
        if status == 200:
            t.completed += 1
        elif status != 499:
            t.failed += 1
        t.prompt_tokens += int(record.get("prompt_tokens") or 0)
        t.completion_tokens += tokens
        t.cost_micro_usd += int(record.get("cost_micro_usd") or 0)
        window = self.models.pop(record["model"], None) or ModelWindow()
        self.models[record["model"]] = window  # re-inserted: dict order is least recently used first
        while len(self.models) > MAX_MODEL_WINDOWS:
            del self.models[next(iter(self.models))]
        b = window.bucket(now)
        b.requests += 1
        b.tokens += tokens
        if status == 200:
            b.completed += 1
            b.busy_s += duration_s
        elif status == 429:
            b.rejected += 1
        elif status == 504:
            b.timeouts += 1
        elif status != 499:
            b.failed += 1
        node, tps = record.get("node"), record.get("tokens_per_s")
        if node and tps:
            old = self.node_tps.get(node)
            self.node_tps[node] = tps if old is None else 0.8 * old + 0.2 * tps
        self.recent.append(record)
        self.publish(record)


def _status_of(outcome: str, first: Frame | None) -> int:
    """The HTTP-like status a settled request ended with, as far as a hook can tell."""
    if outcome == "completed":
        return 200
    if outcome == "cancelled":
        return 499
    if isinstance(first, Error):
        return first.status
    # Settled from inside the gateway's ``except`` block: the refusal is in flight.
    exc = sys.exc_info()[1]
    if isinstance(exc, RequestError):
        return exc.status
    known = getattr(exc, "known", None)
    if known is not None:  # the fleet's NoNodeError
        return 503 if known else 404
    return 502


def privacy_mode(job: Any) -> str:
    """``sealed`` when the request body was a sealed envelope, else ``coordinator-visible``."""
    mode = getattr(job, "privacy", None)
    if isinstance(mode, str) and mode:
        return mode
    return "sealed" if getattr(job, "sealed", None) else "coordinator-visible"


class DashboardHook:
    """A request hook that publishes every settled request to the event bus.

    It admits everything; as a ``StreamTap`` it stamps the first frame, so
    the feed can show time to first token and decode tokens/s.

    Args:
        bus: Where finished requests go.
        cost: Optional ``(job, usage) -> micro-USD``; the cost is shown as unknown without it.
        clock: Monotonic seconds for durations.
    """

    def __init__(
        self, bus: EventBus, cost: CostFn | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.bus = bus
        self.cost = cost
        self.clock = clock
        self._admitted: dict[str, float] = {}
        self._first: dict[str, tuple[float, Frame]] = {}

    async def admit(self, job: Any) -> None:
        self._admitted[job.request_id] = self.clock()

    def first_frame(self, job: Any, timing: Any, frame: Frame) -> None:
        """``StreamTap``: stamp the first frame (a chunk, or an early error such as a 504)."""
        self._first[job.request_id] = (self.clock(), frame)

    def chunk(self, job: Any, gap_s: float, nbytes: int) -> None:
        """``StreamTap``: nothing per chunk; the feed needs only the first frame and the usage."""

    async def settle(self, job: Any, outcome: str, usage: Usage | None, node_id: str | None) -> None:
        now = self.clock()
        start = self._admitted.pop(job.request_id, now)
        first_at, first = self._first.pop(job.request_id, (None, None))
        ttft_ms = round((first_at - start) * 1000, 1) if first_at is not None and not isinstance(first, Error) else None
        tps = None
        if usage is not None and first_at is not None and usage.completion_tokens > 1 and now > first_at:
            # The first token arrives with the first frame; the rest are decoded after it.
            tps = round((usage.completion_tokens - 1) / (now - first_at), 1)
        cost = None
        if self.cost is not None and usage is not None:  # a request that failed is not charged
            try:
                cost = self.cost(job, usage)
            except Exception:
                log.exception("cost function failed for %s", job.request_id)
        record = {
            "id": job.request_id,
            "model": job.model,
            "node": node_id,
            "api": getattr(job, "api", ""),
            "status": _status_of(outcome, first),
            "outcome": outcome,
            "ttft_ms": ttft_ms,
            "tokens_per_s": tps,
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "cost_micro_usd": cost,
            "privacy": privacy_mode(job),
            "duration_ms": round((now - start) * 1000, 1),
        }
        self.bus.request_finished(record, now - start)
