"""Warm pool planning: which cold nodes should load which model. Pure.

Demand is the model's queue. A model with queued requests and either no
warm node or no warm node with room is short; each plan picks, per short
model, one cold node that has the model on disk and enough free memory
(``free_for_load_gb``; unknown counts only when no node has the model warm),
and records a pending load that expires after ``pending_load_ttl_s``. No
second load of a model while one is pending, none on a node whose load of it
failed within ``failed_load_backoff_s``, and at most one plan per
``warm_min_interval_s``: the pool grows by one node at a time, never thrashes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    for model, queue in fleet.queues.items():
        if not len(queue):
            continue
        warm = reg.serving.get(model)
        if warm and reg.available.get(model):
            continue  # room exists: the queue drains without help
        if any(model in n.pending_loads for n in reg.nodes.values()):
            continue
        best = None
        for node in reg.nodes.values():
            info = node.models.get(model)
            slot = node.slots.get(model)
            if info is None or not info.template_render_ok or (slot is not None and slot.warm):
                continue
            if not node.routable(now) or now - node.failed_loads.get(model, float("-inf")) < cfg.failed_load_backoff_s:
                continue
            free = node.free_for_load_gb
            need_gb = info.size_bytes / 1e9 * LOAD_HEADROOM
            if free is None:
                if warm:
                    continue  # unknown memory: only worth the risk when nobody serves the model
                free = 0.0
            elif free < need_gb:
                continue
            key = (free, node.hardware.memory_gb)
            if best is None or key > best[0]:
                best = (key, node)
        if best is not None:
            node = best[1]
            node.pending_loads[model] = now + cfg.pending_load_ttl_s
            plans.append(LoadPlan(node.node_id, model))
    if plans:
        fleet.last_warm_plan = now
    return plans


def load_finished(fleet: FleetState, node_id: str, model: str, ok: bool, now: float) -> None:
    """A node reported the end of a load: clear the pending entry; remember failures."""
    node = fleet.registry.nodes.get(node_id)
    if node is None:
        return
    node.pending_loads.pop(model, None)
    if not ok:
        node.failed_loads[model] = now
