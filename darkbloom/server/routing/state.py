"""The routing state one coordinator keeps: registry, queues, reservations, measurements.

``FleetState`` is plain data with methods that take ``now``; the async
fleet in ``darkbloom.server.fleet`` and the simulator in ``darkbloom.sim``
drive the same object through ``route``, ``commit``, ``release``,
``enqueue``, ``drain`` and ``expire``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from darkbloom.server.routing.hedging import HedgeConfig, HedgeGovernor
from darkbloom.server.routing.queue import ModelQueue, Waiter, retry_after_s
from darkbloom.server.routing.registry import Registry
from darkbloom.server.routing.scoring import ewma


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """Routing defaults (see README "Routing" for where each comes from)."""

    policy: str = "ours"
    queue_depth: int = 32
    queue_timeout_s: float = 120.0
    early_reject_wait_s: float = 15.0
    sample_k: int = 16
    band_s: float = 0.1
    hedge: HedgeConfig = HedgeConfig()
    warm_tick_s: float = 10.0
    warm_min_interval_s: float = 0.25
    warm_max_loads_per_plan: int = 16
    warm_requests_per_load: int = 8
    pending_load_ttl_s: float = 120.0
    failed_load_backoff_s: float = 600.0


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing needs to know about a request (plaintext hints, even when sealed)."""

    request_id: str
    model: str
    prompt_tokens: int
    max_tokens: int
    exclude: frozenset[str] = frozenset()
    needs_tools: bool = False
    """Only nodes whose copy of the model can render tools and parse calls (``ModelInfo.supports_tools``)."""
    needs_json: bool = False
    """Only nodes that can constrain the model's answer to JSON (``ModelInfo.supports_json``)."""
    needs_logprobs: bool = False
    """Only nodes that report token log probabilities (``ModelInfo.supports_logprobs``)."""
    needs_tool_choice: bool = False
    """Only nodes that can force the model to call a tool (``ModelInfo.supports_tool_choice``)."""
    only: frozenset[str] | None = None
    """When set, the only nodes allowed (a sealed request can go only to the nodes it is sealed to)."""

    @property
    def need(self) -> int:
        return self.prompt_tokens + self.max_tokens


@dataclass(slots=True)
class Reservation:
    node_id: str
    model: str
    need: int
    at: float


@dataclass(slots=True)
class ModelStats:
    """Per-model measurements for queue estimates and Retry-After."""

    service_s: float = 0.0
    wait_s: float = 0.0
    feasible_after_ms: int | None = None
    refused: int = 0
    """429s since the warm pool last planned: demand the queue could not even hold."""


@dataclass
class FleetState:
    """Everything routing reads and writes."""

    config: RoutingConfig = field(default_factory=RoutingConfig)
    registry: Registry = field(default_factory=Registry)
    queues: dict[str, ModelQueue] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    stats: dict[str, ModelStats] = field(default_factory=dict)
    governor: HedgeGovernor = field(default_factory=HedgeGovernor)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    rr_cursor: dict[str, int] = field(default_factory=dict)
    last_warm_plan: float = float("-inf")

    def __post_init__(self) -> None:
        self.governor = HedgeGovernor(self.config.hedge)

    def depth(self, model: str) -> int:
        q = self.queues.get(model)
        return len(q) if q is not None else 0

    def model_stats(self, model: str) -> ModelStats:
        s = self.stats.get(model)
        if s is None:
            s = self.stats[model] = ModelStats()
        return s

    def total_slots(self, model: str) -> int:
        return self.registry.slot_total.get(model, 0)

    def estimated_wait_s(self, model: str, ahead: int) -> float:
        """Seconds until a request with ``ahead`` requests queued before it gets a slot (0 = unknown)."""
        service = self.model_stats(model).service_s
        slots = self.total_slots(model)
        if service <= 0 or slots <= 0:
            return 0.0
        return (ahead + 1) * service / slots

    def retry_after(self, model: str) -> int:
        depth = self.depth(model)
        st = self.model_stats(model)
        slots = self.total_slots(model)
        drain = slots / st.service_s if st.service_s > 0 and slots > 0 else 0.0
        return retry_after_s(depth, drain, st.wait_s, st.feasible_after_ms)

    def commit(self, req: RouteRequest, node_id: str, now: float, waited_s: float = 0.0) -> None:
        """Reserve ``req``'s tokens on ``node_id`` (after ``route`` chose it).

        ``waited_s`` is how long it queued (0 for a direct dispatch), folded
        into the model's wait EWMA that Retry-After reads.
        """
        self.registry.reserve(node_id, req.model, req.need)
        st = self.model_stats(req.model)
        if waited_s > 0 or st.wait_s > 0:
            st.wait_s = ewma(st.wait_s, waited_s) if st.wait_s > 0 else waited_s
        self.reservations[req.request_id] = Reservation(node_id, req.model, req.need, now)

    def release(self, request_id: str, now: float, ok: bool | None = None) -> Reservation | None:
        """Give a request's reservation back; idempotent.

        Args:
            ok: True for a completed request, False for a node-side failure
                (counts against the node's breaker and reputation), None for
                an ending that says nothing about the node (consumer cancel,
                lost hedge).
        """
        res = self.reservations.pop(request_id, None)
        if res is None:
            return None
        self.registry.release(res.node_id, res.model, res.need)
        node = self.registry.nodes.get(res.node_id)
        if ok is not None and node is not None:
            node.breaker.record(ok, now)
            node.reputation.record_job(ok)
        if ok:
            st = self.model_stats(res.model)
            st.service_s = ewma(st.service_s, max(1e-3, now - res.at))
            st.feasible_after_ms = None
        return res

    def note_refused(self, model: str) -> None:
        """Count a 429 for ``model`` (the warm pool reads it as unmet demand)."""
        self.model_stats(model).refused += 1

    def enqueue(self, req: RouteRequest, now: float) -> Waiter:
        waiter = Waiter(req.request_id, req.model, req.prompt_tokens, req.max_tokens, now, now + self.config.queue_timeout_s, req)
        self.queues.setdefault(req.model, ModelQueue()).push(waiter)
        return waiter

    def dequeue(self, request_id: str, model: str) -> Waiter | None:
        q = self.queues.get(model)
        return q.remove(request_id) if q is not None else None

    def expire(self, now: float) -> list[Waiter]:
        """Waiters past the queue timeout, removed from their queues."""
        out: list[Waiter] = []
        for q in self.queues.values():
            if len(q):
                out.extend(q.expire(now))
        return out
