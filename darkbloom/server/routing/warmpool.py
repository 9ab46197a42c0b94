"""Warm pool planning: which cold nodes should load which model. Pure.

Demand for a model is its queue plus the 429s it caused since the last plan.
A model with demand and no warm node with room is short; each plan starts one
load per ``warm_requests_per_load`` requests of demand, counting loads already
under way, at most ``warm_max_loads_per_plan`` per model, on the cold nodes
that have the model on disk and the most free memory (``free_for_load_gb``;
unknown counts only when no node has the model warm). A pending load expires
after ``pending_load_ttl_s`` (and counts as failed); a node whose load failed
is not asked again for ``failed_load_backoff_s``; plans come at most every
``warm_min_interval_s``. Nothing is ever unloaded here, so the pool cannot thrash.
"""

from __future__ import annotations

from dataclasses import dataclass

from darkbloom.server.routing.registry import NodeState
from darkbloom.server.routing.state import FleetState

LOAD_HEADROOM = 1.2
"""Weights plus KV and activations: a model needs about 1.2 x its file size."""


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """Send ``load_model(model)`` to ``node_id``."""

    node_id: str
    model: str


def plan_warm_pool(fleet: FleetState, now: float) -> list[LoadPlan]:
    """Loads to start now (and records them as pending in the registry)."""
    cfg = fleet.config
    if now - fleet.last_warm_plan < cfg.warm_min_interval_s:
        return []
    reg = fleet.registry
    for node in reg.nodes.values():
        for model, expires in list(node.pending_loads.items()):
            if expires <= now:
                del node.pending_loads[model]
                node.failed_loads[model] = now  # a load that never reported counts as failed
    plans: list[LoadPlan] = []
    models = set(fleet.queues) | {m for m, st in fleet.stats.items() if st.refused}
    for model in sorted(models):
        stats = fleet.model_stats(model)
        demand = fleet.depth(model) + stats.refused
        stats.refused = 0
        if not demand:
            continue
        warm = reg.serving.get(model)
        if warm and reg.available.get(model) and not fleet.depth(model):
            continue  # room exists: the queue drains without help
        pending = sum(1 for n in reg.nodes.values() if model in n.pending_loads)
        # One load per ``warm_requests_per_load`` of unmet demand, counting loads under way.
        wanted = min(cfg.warm_max_loads_per_plan, -(-demand // cfg.warm_requests_per_load) - pending)
        for node in _load_targets(fleet, model, bool(warm), now)[: max(0, wanted)]:
            node.pending_loads[model] = now + cfg.pending_load_ttl_s
            plans.append(LoadPlan(node.node_id, model))
    if plans:
        fleet.last_warm_plan = now
    return plans


def _load_targets(fleet: FleetState, model: str, warm_somewhere: bool, now: float) -> list[NodeState]:
    """Cold nodes that could load ``model`` now, most free memory first."""
    cfg = fleet.config
    out: list[tuple[float, float, NodeState]] = []
    for node in fleet.registry.nodes.values():
        info = node.models.get(model)
        slot = node.slots.get(model)
        if info is None or not info.template_render_ok or (slot is not None and slot.warm) or model in node.pending_loads:
            continue
        if not node.routable(now) or now - node.failed_loads.get(model, float("-inf")) < cfg.failed_load_backoff_s:
            continue
        free = node.free_for_load_gb
        if free is None:
            if warm_somewhere:
                continue  # unknown memory: only worth the risk when nobody serves the model
            free = 0.0
        elif free < info.size_bytes / 1e9 * LOAD_HEADROOM:
            continue
        out.append((free, node.hardware.memory_gb, node))
    out.sort(key=lambda t: (t[0], t[1]), reverse=True)
    return [t[2] for t in out]


def load_finished(fleet: FleetState, node_id: str, model: str, ok: bool, now: float) -> None:
    """A node reported the end of a load: clear the pending entry; remember failures."""
    node = fleet.registry.nodes.get(node_id)
    if node is None:
        return
    node.pending_loads.pop(model, None)
    if not ok:
        node.failed_loads[model] = now
