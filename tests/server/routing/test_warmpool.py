"""Warm pool: a queued model gets one cold node told to load it; no thrash; failures back off."""

from __future__ import annotations

from darkbloom.protocol import Capacity, Hardware, ModelInfo, SlotCapacity
from darkbloom.server.routing.route import Enqueue, NoNode, route
from darkbloom.server.routing.state import FleetState, RouteRequest
from darkbloom.server.routing.warmpool import LoadPlan, load_finished, plan_warm_pool

BIG = ModelInfo(id="big", size_bytes=10 * 10**9)


def _fleet() -> FleetState:
    fleet = FleetState()
    for nid, free in (("small", 8.0), ("roomy", 40.0), ("roomier", 60.0)):
        # Each has "big" on disk, but only "other" loaded.
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="other", max_concurrency=2),), free_for_load_gb=free)
        fleet.registry.add(nid, (BIG, ModelInfo(id="other")), Hardware(memory_gb=64), 0.0, capacity=cap)
    return fleet


def test_queued_demand_for_a_cold_model_loads_it_on_the_node_with_most_free_memory() -> None:
    fleet = _fleet()
    req = RouteRequest("r", "big", 10, 10)
    assert isinstance(route(req, fleet, 1.0), Enqueue)  # known, on disk, not warm: wait for the load
    fleet.enqueue(req, 1.0)
    assert plan_warm_pool(fleet, 1.0) == [LoadPlan("roomier", "big")]
    # Pending: no second load of the same model, however often we plan.
    assert plan_warm_pool(fleet, 2.0) == [] and plan_warm_pool(fleet, 60.0) == []
    # The load failed: that node is left alone for a while; the next best gets it.
    load_finished(fleet, "roomier", "big", ok=False, now=61.0)
    assert plan_warm_pool(fleet, 62.0) == [LoadPlan("roomy", "big")]
    # A load that never reports expires after 2 min and counts as failed; the 8 GB node is too small.
    assert plan_warm_pool(fleet, 62.0 + 121.0) == []


def test_no_demand_no_load_and_unknown_models_have_no_node() -> None:
    fleet = _fleet()
    assert plan_warm_pool(fleet, 1.0) == []
    assert route(RouteRequest("r", "nope", 1, 1), fleet, 1.0) == NoNode(known=False)
