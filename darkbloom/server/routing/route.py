"""The routing decision: ``route(request, fleet, now) -> Decision``. Pure.

Policies (``RoutingConfig.policy``): ``ours`` scores a random sample of the
nodes with room by expected time to first token (power-of-d choices: O(1) in
the fleet size), ``least-loaded``, ``round-robin`` and ``random`` are the
baselines the simulator compares against. All of them respect token-budget
admission, breakers, trust and FIFO order behind a queue.
"""

from __future__ import annotations

from dataclasses import dataclass

from darkbloom.server.routing.registry import NodeState, Slot
from darkbloom.server.routing.scoring import LOAD_SLOWDOWN, expected_ttft, penalised
from darkbloom.server.routing.state import FleetState, RouteRequest

POLICIES = ("ours", "least-loaded", "round-robin", "random")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send the request to ``node_id`` now."""

    node_id: str
    expected_ttft_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Enqueue:
    """No room now: wait in the model's queue."""

    expected_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse at once (429 with ``retry_after_s``, or 400 when the request can never fit)."""

    status: int
    code: str
    reason: str
    retry_after_s: int = 0


@dataclass(frozen=True, slots=True)
class NoNode:
    """No connected node has the model at all (``known``: some node served it once)."""

    known: bool


Decision = Dispatch | Enqueue | Reject | NoNode


def _eligible(node: NodeState, slot: Slot | None, req: RouteRequest, now: float) -> bool:
    return (
        slot is not None
        and slot.warm
        and node.node_id not in req.exclude
        and node.routable(now)
        and slot.budget.fits(req.need)
        and (not req.needs_tools or node.models[req.model].supports_tools)
        and (not req.needs_json or node.models[req.model].supports_json)
        and (not req.needs_tool_choice or node.models[req.model].supports_tool_choice)
        and (not req.needs_logprobs or node.models[req.model].supports_logprobs)
        and (req.only is None or node.node_id in req.only)
    )


def _ttft(node: NodeState, slot: Slot, req: RouteRequest) -> float:
    # Prefill shares the device with the running batch: slower as it grows.
    base = expected_ttft(req.prompt_tokens, slot.rates, slot.reported_queued_tokens, node.rtt_s)
    return base * (1.0 + LOAD_SLOWDOWN * slot.budget.running)


def _pick_ours(fleet: FleetState, req: RouteRequest, now: float) -> Dispatch | None:
    reg = fleet.registry
    avail = reg.available.get(req.model)
    if not avail:
        return None
    k = fleet.config.sample_k
    # A sealed request names its few possible nodes: score those, not a sample of everyone.
    ids = [n for n in req.only if n in avail] if req.only is not None else avail.sample(k, fleet.rng)
    scored: list[tuple[float, int, str]] = []
    for attempt in range(2):
        for node_id in ids:
            node = reg.nodes[node_id]
            slot = node.slots.get(req.model)
            if _eligible(node, slot, req, now):
                assert slot is not None
                uptime = now - node.connected_at
                scored.append((penalised(_ttft(node, slot, req), node.reputation.score(uptime)), slot.budget.reserved, node_id))
        if scored or attempt or len(avail) <= k or req.only is not None:
            break
        ids = list(avail.items())  # the sample held nobody eligible: look at everyone once
    if not scored:
        return None
    best = min(s[0] for s in scored)
    # Within a band of the best, prefer the node with the least work reserved: spreads load.
    band = [s for s in scored if s[0] <= best + fleet.config.band_s]
    ttft, _, node_id = min(band, key=lambda s: (s[1], s[0]))
    return Dispatch(node_id, ttft)


def _pick_least_loaded(fleet: FleetState, req: RouteRequest, now: float) -> Dispatch | None:
    reg = fleet.registry
    best: tuple[float, int] | None = None
    pick = None
    for node_id in reg.available.get(req.model, ()):  # type: ignore[attr-defined]
        node = reg.nodes[node_id]
        slot = node.slots.get(req.model)
        if _eligible(node, slot, req, now):
            assert slot is not None
            key = (slot.budget.running / slot.budget.max_concurrency, node.served)
            if best is None or key < best:
                best, pick = key, node_id
    return Dispatch(pick) if pick is not None else None


def _pick_round_robin(fleet: FleetState, req: RouteRequest, now: float) -> Dispatch | None:
    reg = fleet.registry
    members = reg.serving.get(req.model)
    if not members:
        return None
    items = members.items()
    start = fleet.rr_cursor.get(req.model, 0)
    for i in range(len(items)):
        node_id = items[(start + i) % len(items)]
        node = reg.nodes[node_id]
        if _eligible(node, node.slots.get(req.model), req, now):
            fleet.rr_cursor[req.model] = (start + i + 1) % len(items)
            return Dispatch(node_id)
    return None


def _pick_random(fleet: FleetState, req: RouteRequest, now: float) -> Dispatch | None:
    reg = fleet.registry
    members = reg.serving.get(req.model)
    if not members:
        return None
    # Random over every node with the model warm; if that one is full, the request waits.
    node_id = members.sample(1, fleet.rng)[0]
    node = reg.nodes[node_id]
    return Dispatch(node_id) if _eligible(node, node.slots.get(req.model), req, now) else None


def _with_ttft(picker):  # type: ignore[no-untyped-def]
    """A baseline's pick, carrying the same expected TTFT ``ours`` computes (hedge deadlines need it)."""

    def pick(fleet: FleetState, req: RouteRequest, now: float) -> Dispatch | None:
        d = picker(fleet, req, now)
        if d is None:
            return None
        node = fleet.registry.nodes[d.node_id]
        return Dispatch(d.node_id, _ttft(node, node.slots[req.model], req))

    return pick


_PICKERS = {
    "ours": _pick_ours,
    "least-loaded": _with_ttft(_pick_least_loaded),
    "round-robin": _with_ttft(_pick_round_robin),
    "random": _with_ttft(_pick_random),
}


def route(req: RouteRequest, fleet: FleetState, now: float, *, from_queue: bool = False) -> Decision:
    """Decide where ``req`` goes now.

    Args:
        req: The request's routing hints.
        fleet: The routing state (read only here; call ``fleet.commit`` on a ``Dispatch``).
        now: The current time on the caller's clock (seconds).
        from_queue: The request is the head of its model's queue being
            drained; otherwise a non-empty queue means the request waits
            behind it (FIFO).
    """
    reg = fleet.registry
    model = req.model
    if not reg.serving.get(model):
        # A fenced or untrusted node is no capacity to wait for (attestation decides, not load).
        on_disk = any(model in n.models and n.trust == "trusted" for n in reg.nodes.values()) if model in reg.known_models else False
        if not on_disk:
            return NoNode(known=model in reg.known_models)
        # Known and on some node's disk, just not warm: queue while the warm pool loads it.
    if req.only is not None and not any(
        (n := reg.nodes.get(nid)) is not None and model in n.models and n.trust == "trusted" for nid in req.only
    ):
        return NoNode(known=True)  # none of a sealed request's recipients can take it: never queue for them
    depth = fleet.depth(model)
    if from_queue or depth == 0:
        picked = _PICKERS[fleet.config.policy](fleet, req, now)
        if picked is not None:
            return picked
        if not from_queue and _never_fits(fleet, req):
            return Reject(400, "context_length_exceeded", f"request needs {req.need} tokens, more than any node serving {model} can hold")
    if from_queue:
        return Enqueue()
    if depth >= fleet.config.queue_depth:
        return Reject(429, "rate_limit_exceeded", f"the queue for {model} is full ({depth} waiting)", fleet.retry_after(model))
    wait = fleet.estimated_wait_s(model, depth)
    if wait > fleet.config.early_reject_wait_s:
        return Reject(429, "rate_limit_exceeded", f"estimated wait for {model} is {wait:.0f} s", fleet.retry_after(model))
    return Enqueue(wait)


def _never_fits(fleet: FleetState, req: RouteRequest) -> bool:
    members = fleet.registry.serving.get(req.model)
    if not members:
        return False
    for node_id in members.items():
        budget = fleet.registry.nodes[node_id].slots[req.model].budget
        if budget.max_tokens <= 0 or req.need <= budget.max_tokens:
            return False
    return True


def drain(fleet: FleetState, model: str, now: float) -> list[tuple[RouteRequest, Dispatch]]:
    """Dispatch waiters from the head of ``model``'s queue while they fit; commits each.

    Returns:
        The (request, decision) pairs now dispatched, in queue order.
    """
    q = fleet.queues.get(model)
    out: list[tuple[RouteRequest, Dispatch]] = []
    while q:
        head = q.head()
        assert head is not None
        req = head.request if isinstance(head.request, RouteRequest) else RouteRequest(head.request_id, model, head.prompt_tokens, head.max_tokens)
        decision = route(req, fleet, now, from_queue=True)
        if not isinstance(decision, Dispatch):
            break
        q.pop_head()
        fleet.commit(req, decision.node_id, now, waited_s=now - head.enqueued_at)
        out.append((req, decision))
    return out
