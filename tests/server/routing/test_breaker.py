"""Breakers: a node that keeps failing stops getting requests for a while, then gets them again."""

from __future__ import annotations

from darkbloom.protocol import Capacity, Hardware, ModelInfo, SlotCapacity
from darkbloom.server.routing.breaker import Breaker
from darkbloom.server.routing.route import Dispatch, route
from darkbloom.server.routing.state import FleetState, RouteRequest


def test_two_errors_in_a_minute_open_the_breaker_for_five_minutes() -> None:
    b = Breaker()
    assert not b.record(False, 0.0)
    assert b.record(False, 30.0) and b.is_open(31.0) and b.is_open(329.0) and not b.is_open(330.0)
    spaced = Breaker()
    assert not spaced.record(False, 0.0) and not spaced.record(False, 61.0)  # a minute apart: no burst


def test_a_run_of_faults_backs_off_doubling() -> None:
    b = Breaker()
    b.config = type(b.config)(burst_errors=100)  # isolate the consecutive-fault rule
    cooldowns = []
    now = 0.0
    for _ in range(3):
        for _ in range(5):
            now += 1.0
            b.record(False, now)
        cooldowns.append(b.open_until - now)
        now = b.open_until
    assert cooldowns == [60.0, 120.0, 240.0]


def test_routing_skips_a_node_whose_breaker_is_open() -> None:
    fleet = FleetState()
    for nid in ("flaky", "steady"):
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m", max_concurrency=4),))
        fleet.registry.add(nid, (ModelInfo(id="m"),), Hardware(), 0.0, capacity=cap)
    for i in range(2):
        req = RouteRequest(f"bad{i}", "m", 10, 10)
        fleet.commit(req, "flaky", 1.0)
        fleet.release(req.request_id, 2.0, ok=False)
    picks = set()
    for i in range(20):
        d = route(RouteRequest(f"r{i}", "m", 10, 10), fleet, 10.0)
        assert isinstance(d, Dispatch)
        picks.add(d.node_id)
    assert picks == {"steady"}
    after = route(RouteRequest("later", "m", 10, 10, exclude=frozenset({"steady"})), fleet, 400.0)
    assert isinstance(after, Dispatch) and after.node_id == "flaky"  # cooled down: routable again
