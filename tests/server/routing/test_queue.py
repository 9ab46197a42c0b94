"""The per-model queue: FIFO, timeout with 429, early 429 with the documented Retry-After."""

from __future__ import annotations

import time
from pathlib import Path

from darkbloom.protocol import Capacity, Chunk, Complete, Hardware, InferenceRequest, ModelInfo, SlotCapacity, Usage
from darkbloom.server.routing.queue import retry_after_s
from darkbloom.server.routing.route import Dispatch, Enqueue, Reject, drain, route
from darkbloom.server.routing.state import FleetState, RouteRequest, RoutingConfig
from tests.server.routing.conftest import StandIn, in_thread, live_coordinator

GOOD = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def _one_slot_fleet(**kw: object) -> FleetState:
    fleet = FleetState(RoutingConfig(**kw))  # type: ignore[arg-type]
    cap = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m", max_concurrency=1),))
    fleet.registry.add("n", (ModelInfo(id="m"),), Hardware(), 0.0, capacity=cap)
    return fleet


def test_retry_after_follows_the_documented_rules() -> None:
    assert retry_after_s(0) == 2
    assert retry_after_s(1) == 3 and retry_after_s(5) == 15 and retry_after_s(32) == 30  # depth x 3, 2-30
    assert retry_after_s(8, drain_per_s=4.0) == 2 and retry_after_s(40, drain_per_s=2.0) == 20  # depth / drain rate
    assert retry_after_s(3, wait_ewma_s=2.5) == 15 and retry_after_s(3, wait_ewma_s=30) == 60  # ceil(wait) x 5, cap 60
    assert retry_after_s(3, wait_ewma_s=30, feasible_after_ms=7500) == 8  # the node's hint wins
    assert retry_after_s(0, feasible_after_ms=100) == 2 and retry_after_s(0, feasible_after_ms=99_000) == 30


def test_queue_is_fifo_and_times_out() -> None:
    fleet = _one_slot_fleet(queue_timeout_s=120.0)
    first = RouteRequest("a", "m", 10, 10)
    assert isinstance(d := route(first, fleet, 0.0), Dispatch)
    fleet.commit(first, d.node_id, 0.0)
    for i, rid in enumerate(["b", "c"]):
        assert isinstance(route(RouteRequest(rid, "m", 10, 10), fleet, 1.0 + i), Enqueue)
        fleet.enqueue(RouteRequest(rid, "m", 10, 10), 1.0 + i)
    # A newcomer queues behind the waiters even if a slot frees later: FIFO.
    fleet.release("a", 5.0, ok=True)
    assert [r.request_id for r, _ in drain(fleet, "m", 5.0)] == ["b"]
    assert [w.request_id for w in fleet.expire(121.9)] == []
    assert [w.request_id for w in fleet.expire(122.0)] == ["c"]


def test_early_429_when_the_queue_is_full_or_the_wait_too_long() -> None:
    fleet = _one_slot_fleet(queue_depth=3, early_reject_wait_s=60.0)
    busy = RouteRequest("a", "m", 10, 10)
    fleet.commit(busy, "n", 0.0)
    for rid in "bcd":
        fleet.enqueue(RouteRequest(rid, "m", 10, 10), 0.0)
    full = route(RouteRequest("e", "m", 10, 10), fleet, 1.0)
    assert isinstance(full, Reject) and full.status == 429 and full.retry_after_s == 9  # 3 queued x 3 s
    # With a measured service time of 20 s on one slot, a 4th in line would wait (3 + 1) x 20 = 80 s > 60 s.
    fleet = _one_slot_fleet(queue_depth=32, early_reject_wait_s=60.0)
    fleet.model_stats("m").service_s = 20.0
    fleet.commit(busy, "n", 0.0)
    for rid in "bc":
        fleet.enqueue(RouteRequest(rid, "m", 10, 10), 0.0)
    assert isinstance(route(RouteRequest("x", "m", 10, 10), fleet, 1.0), Enqueue)  # 3rd in line: 60 s, not over
    fleet.enqueue(RouteRequest("d", "m", 10, 10), 0.0)
    late = route(RouteRequest("e", "m", 10, 10), fleet, 1.0)
    assert isinstance(late, Reject) and late.status == 429
    assert late.retry_after_s == 30  # 3 queued / (1 slot / 20 s) = 60 s, clamped to 30


def test_http_queue_full_and_queue_timeout_answer_429_with_retry_after(tmp_path: Path) -> None:
    cfg = RoutingConfig(queue_depth=1, queue_timeout_s=1.0)
    for live in live_coordinator(tmp_path, {"routing": cfg}):
        node = StandIn(live, "solo", max_concurrency=1)
        t_a, out_a = in_thread(lambda: live.post(GOOD))
        req_a = node.recv()
        assert isinstance(req_a, InferenceRequest)
        t_b, out_b = in_thread(lambda: live.post(GOOD))
        deadline = time.monotonic() + 5
        while live.fleet.state.depth("m1") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        r_c = live.post(GOOD)  # the queue (depth 1) is full: refused at once
        assert r_c.status_code == 429 and time.monotonic() - started < 1.0
        assert r_c.headers["Retry-After"] == "3"  # 1 queued x 3 s (no service time measured yet)
        assert r_c.json()["error"]["code"] == "rate_limit_exceeded"
        t_b.join(10)
        r_b = out_b["result"]
        assert r_b.status_code == 429 and "within 1 s" in r_b.json()["error"]["message"]
        assert int(r_b.headers["Retry-After"]) >= 2
        # The busy request still completes normally, and every request was settled once.
        node.send(Chunk(request_id=req_a.request_id, seq=0, text="ok"))
        node.send(Complete(request_id=req_a.request_id, usage=Usage(1, 1)))
        t_a.join(10)
        assert out_a["result"].status_code == 200
        node.close()
        outcomes = sorted(s[1] for s in live.hook.settled)
        assert outcomes == ["completed", "failed", "failed"] and len(live.hook.admitted) == 3
