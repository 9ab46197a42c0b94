"""Token-budget admission never over-commits a slot, whatever the arrivals and completions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darkbloom.protocol import Capacity, Hardware, ModelInfo, SlotCapacity
from darkbloom.server.routing.admission import OverCommit, TokenBudget
from darkbloom.server.routing.route import POLICIES, Dispatch, Enqueue, Reject, drain, route
from darkbloom.server.routing.state import FleetState, RouteRequest, RoutingConfig

MODEL = "m"

arrival = st.tuples(st.just("arrive"), st.integers(1, 3000), st.integers(1, 3000))
completion = st.tuples(st.just("complete"), st.integers(0, 1000), st.integers(0, 0))
capacity = st.tuples(st.just("capacity"), st.integers(0, 3), st.integers(1, 6))
ops = st.lists(st.one_of(arrival, arrival, completion, capacity), max_size=120)


def _within(fleet: FleetState, node_id: str) -> None:
    """Right after an admission, the slot it landed on is within its reported limits."""
    b = fleet.registry.nodes[node_id].slots[MODEL].budget
    assert b.running <= b.max_concurrency
    assert b.max_tokens <= 0 or b.reserved <= b.max_tokens


def _books(fleet: FleetState) -> None:
    """Every slot's counters equal the sum of the reservations held on it."""
    for node in fleet.registry.nodes.values():
        b = node.slots[MODEL].budget
        held = [r for r in fleet.reservations.values() if r.node_id == node.node_id]
        assert b.running == len(held) and b.reserved == sum(r.need for r in held)
        assert node.in_flight == len(held)


@settings(max_examples=150, deadline=None)
@given(ops=ops, policy=st.sampled_from(POLICIES))
def test_admission_never_over_commits(ops: list[tuple[str, int, int]], policy: str) -> None:
    fleet = FleetState(RoutingConfig(policy=policy, queue_depth=8))
    seqs = {}
    for i in range(3):
        nid = f"n{i}"
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model=MODEL, max_concurrency=2 + i, active_token_budget_max=4000 * (i + 1)),))
        fleet.registry.add(nid, (ModelInfo(id=MODEL),), Hardware(memory_gb=32), 0.0, capacity=cap)
        seqs[nid] = 1
    now = 0.0
    for n, (kind, a, b) in enumerate(ops):
        now += 0.1
        admitted: list[str] = []
        if kind == "arrive":
            req = RouteRequest(f"r{n}", MODEL, a, b)
            d = route(req, fleet, now)
            if isinstance(d, Dispatch):
                fleet.commit(req, d.node_id, now)
                admitted.append(d.node_id)
            elif isinstance(d, Enqueue):
                fleet.enqueue(req, now)
            else:
                assert isinstance(d, Reject)
        elif kind == "complete" and fleet.reservations:
            rid = sorted(fleet.reservations)[a % len(fleet.reservations)]
            fleet.release(rid, now, ok=True)
            admitted += [d.node_id for _, d in drain(fleet, MODEL, now)]
        elif kind == "capacity":
            # The node reports a new budget; a smaller one leaves it over until its work drains,
            # and nothing new may land on it meanwhile.
            nid = f"n{a % 3}"
            seqs[nid] += 1
            cap = Capacity(capacity_seq=seqs[nid], slots=(SlotCapacity(model=MODEL, max_concurrency=b, active_token_budget_max=1000 * b),))
            fleet.registry.heartbeat(nid, cap, now)
            admitted += [d.node_id for _, d in drain(fleet, MODEL, now)]
        for node_id in admitted:
            _within(fleet, node_id)
        _books(fleet)
    for rid in list(fleet.reservations):
        fleet.release(rid, now)
    for node in fleet.registry.nodes.values():
        assert node.slots[MODEL].budget.reserved == 0 and node.slots[MODEL].budget.running == 0


def test_token_budget_refuses_what_does_not_fit() -> None:
    b = TokenBudget(max_tokens=100, max_concurrency=2)
    b.reserve(60)
    assert not b.fits(41) and b.fits(40)
    b.reserve(40)
    assert not b.fits(1)  # full on both counts
    try:
        b.reserve(1)
    except OverCommit:
        pass
    else:
        raise AssertionError("reserve past the budget must raise")
    b.release(60)
    assert b.fits(60) and b.reserved == 40 and b.running == 1


def test_a_request_larger_than_any_node_is_refused_with_400() -> None:
    fleet = FleetState()
    cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model=MODEL, max_concurrency=4, active_token_budget_max=1000),))
    fleet.registry.add("n", (ModelInfo(id=MODEL),), Hardware(), 0.0, capacity=cap)
    d = route(RouteRequest("r", MODEL, 900, 200), fleet, 1.0)
    assert isinstance(d, Reject) and d.status == 400


@pytest.mark.parametrize("need", ["tools", "json", "tool_choice"])
def test_a_request_that_needs_a_feature_goes_only_to_nodes_that_have_it(need: str) -> None:
    fleet = FleetState()
    for nid, has in (("plain", False), ("capable", True)):
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model=MODEL, max_concurrency=8),))
        fleet.registry.add(nid, (ModelInfo(id=MODEL, **{f"supports_{need}": has}),), Hardware(), 0.0, capacity=cap)
    picks = set()
    for i in range(12):
        req = RouteRequest(f"t{i}", MODEL, 10, 10, **{f"needs_{need}": True})  # type: ignore[arg-type]
        d = route(req, fleet, 1.0)
        if isinstance(d, Dispatch):
            fleet.commit(req, d.node_id, 1.0)
            picks.add(d.node_id)
        else:
            assert isinstance(d, Enqueue)  # the capable node is full: wait for it, never the other
    assert picks == {"capable"}


def test_a_sealed_request_goes_only_to_a_node_it_is_sealed_to() -> None:
    fleet = FleetState()
    for i in range(40):
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model=MODEL, max_concurrency=2),))
        fleet.registry.add(f"n{i}", (ModelInfo(id=MODEL),), Hardware(), 0.0, capacity=cap)
    only = frozenset({"n7", "n31"})
    picks = []
    for i in range(5):
        req = RouteRequest(f"s{i}", MODEL, 10, 10, only=only)
        d = route(req, fleet, 1.0)
        if isinstance(d, Dispatch):
            fleet.commit(req, d.node_id, 1.0)
            picks.append(d.node_id)
        else:
            assert isinstance(d, Enqueue)  # both recipients full (2 slots each): wait, never another node
    assert sorted(picks) == ["n31", "n31", "n7", "n7"]


def test_a_queued_request_keeps_its_constraints_when_the_queue_drains() -> None:
    fleet = FleetState()
    for nid, tools in (("plain", False), ("toolful", True)):
        cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model=MODEL, max_concurrency=1),))
        fleet.registry.add(nid, (ModelInfo(id=MODEL, supports_tools=tools),), Hardware(), 0.0, capacity=cap)
    busy = RouteRequest("busy", MODEL, 10, 10)
    fleet.commit(busy, "toolful", 0.0)
    waiting = RouteRequest("w", MODEL, 10, 10, needs_tools=True)
    assert isinstance(route(waiting, fleet, 1.0), Enqueue)
    fleet.enqueue(waiting, 1.0)
    assert drain(fleet, MODEL, 2.0) == []  # "plain" has room, but cannot run tools
    fleet.release("busy", 3.0, ok=True)
    assert [(r.request_id, d.node_id) for r, d in drain(fleet, MODEL, 3.0)] == [("w", "toolful")]
