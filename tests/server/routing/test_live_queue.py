"""Queued requests go out as capacity appears: a slot frees, or the warm pool loads the model."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from darkbloom.protocol import Capacity, Chunk, Complete, Heartbeat, InferenceRequest, LoadModel, ModelInfo, SlotCapacity, Usage
from darkbloom.server.routing.state import RoutingConfig
from tests.server.routing.conftest import Live, StandIn, in_thread, live_coordinator


def _answer(node: StandIn, req: InferenceRequest, text: str) -> None:
    node.send(Chunk(request_id=req.request_id, seq=0, text=text))
    node.send(Complete(request_id=req.request_id, usage=Usage(1, 1)))


def _wait_queued(live: Live, model: str) -> None:
    deadline = time.monotonic() + 5
    while live.fleet.state.depth(model) < 1:
        assert time.monotonic() < deadline, "request never queued"
        time.sleep(0.01)


def test_a_queued_request_is_dispatched_when_a_slot_frees(live: Live) -> None:
    node = StandIn(live, "solo", max_concurrency=1)
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    t_a, out_a = in_thread(lambda: live.post(body))
    req_a = node.recv()
    t_b, out_b = in_thread(lambda: live.post(body))
    _wait_queued(live, "m1")
    assert node.try_recv(0.3) is None  # B waits: the node has one slot
    _answer(node, req_a, "first")  # type: ignore[arg-type]
    req_b = node.recv()
    assert isinstance(req_b, InferenceRequest) and req_b.request_id != req_a.request_id  # type: ignore[union-attr]
    _answer(node, req_b, "second")
    t_a.join(10)
    t_b.join(10)
    assert [out_a["result"].json()["choices"][0]["message"]["content"], out_b["result"].json()["choices"][0]["message"]["content"]] == ["first", "second"]
    node.close()


def test_demand_for_a_cold_model_loads_it_and_the_queue_drains_on_the_next_heartbeat(tmp_path: Path) -> None:
    for live in live_coordinator(tmp_path, {"routing": RoutingConfig(queue_timeout_s=20)}):
        node = StandIn(live, "roomy", on_disk=(ModelInfo(id="big", size_bytes=10 * 10**9),), free_for_load_gb=64.0)
        body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        t, out = in_thread(lambda: live.post(body))
        load = node.recv(5)
        assert isinstance(load, LoadModel) and load.model == "big"
        # The node loaded it: its next heartbeat reports the new slot, and the queued request follows.
        slots = (SlotCapacity(model="m1", max_concurrency=4), SlotCapacity(model="big", max_concurrency=2))
        node.send(Heartbeat(capacity=Capacity(capacity_seq=2, slots=slots, free_for_load_gb=52.0)))
        req = node.recv(5)
        assert isinstance(req, InferenceRequest) and req.model == "big"
        _answer(node, req, "warm now")
        t.join(10)
        assert out["result"].status_code == 200
        assert out["result"].json()["choices"][0]["message"]["content"] == "warm now"
        node.close()


def test_queue_depth_and_writer_lanes_are_exported_as_metrics(live: Live) -> None:
    node = StandIn(live, "solo", max_concurrency=1)
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    t_a, _ = in_thread(lambda: live.post(body))
    req_a = node.recv()
    t_b, _ = in_thread(lambda: live.post(body))
    _wait_queued(live, "m1")
    text = httpx.get(f"{live.base_url}/metrics", timeout=10).text
    assert 'darkbloom_queue_depth{model="m1"} 1.0' in text
    assert 'darkbloom_writer_lane_depth{lane="control"}' in text
    _answer(node, req_a, "a")  # type: ignore[arg-type]
    _answer(node, node.recv(), "b")  # type: ignore[arg-type]
    t_a.join(10)
    t_b.join(10)
    node.close()
