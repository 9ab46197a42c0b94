"""The dashboard API in process: who may see what, and what a settled request looks like there."""

from __future__ import annotations

import time

from darkbloom.protocol import (
    Capacity,
    Chunk,
    Complete,
    Error,
    Hardware,
    ModelInfo,
    Register,
    SlotCapacity,
    Usage,
    decode,
    encode,
)
from darkbloom.server.auth.admin import read_admin_key
from tests.server.conftest import Coordinator
from tests.server.test_provider_socket import GOOD, _stream_in_thread

CAPACITY = Capacity(
    capacity_seq=1,
    slots=(SlotCapacity(model="m1", state="running", num_running=1, max_concurrency=4, observed_decode_tps=42.5),),
    total_memory_gb=64.0,
    free_for_load_gb=20.5,
)


def _register(ws, node_id: str = "node-secret-7") -> None:  # type: ignore[no-untyped-def]
    reg = Register(
        node_id=node_id,
        models=(ModelInfo(id="m1"),),
        hardware=Hardware(chip="Apple M3 Max", memory_gb=64.0),
        capacity=CAPACITY,
    )  # type: ignore[arg-type]
    ws.send_bytes(encode(reg))
    assert type(decode(ws.receive_bytes())).__name__ == "Registered"


def _admin(c: Coordinator) -> dict[str, str]:
    return {"Authorization": f"Bearer {read_admin_key(c.settings.home)}"}


def _serve_one(c: Coordinator, ws, *, text: str = "hi", tokens: int = 3) -> str:  # type: ignore[no-untyped-def]
    t, out = _stream_in_thread(c, GOOD)
    req = decode(ws.receive_bytes())
    ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text=text)))
    ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=4, completion_tokens=tokens))))
    t.join(10)
    assert out["status"] == 200
    return str(req.request_id)


def test_fleet_view_needs_the_admin_credential(coordinator: Coordinator) -> None:
    assert coordinator.client.get("/v1/admin/fleet").status_code == 401
    refused = coordinator.client.get("/v1/admin/fleet", headers=coordinator.auth)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
    assert coordinator.client.get("/v1/admin/events", headers=coordinator.auth).status_code == 403
    assert coordinator.client.get("/v1/network").status_code == 401
    assert coordinator.client.get("/v1/network/events", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_fleet_view_shows_nodes_slots_and_the_finished_request(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _register(ws)
        rid = _serve_one(coordinator, ws, tokens=3)
        view = coordinator.client.get("/v1/admin/fleet", headers=_admin(coordinator)).json()
    assert view["view"] == "admin"
    [node] = view["nodes"]
    assert node["id"] == "node-secret-7" and node["chip"] == "Apple M3 Max" and node["models"] == ["m1"]
    assert node["slots"] == [
        {
            "model": "m1",
            "state": "running",
            "running": 1,
            "waiting": 0,
            "max": 4,
            "decode_tps": 42.5,
            "prefill_tps": 0.0,
        }
    ]
    assert node["max"] == 4 and node["active"] == 0 and node["served"] == 1
    assert node["free_for_load_gb"] == 20.5 and node["heartbeat_age_s"] < 30
    assert node["trust_level"] == "none"  # it registered without an attestation bundle
    [rec] = view["recent"]
    assert rec["id"] == rid and rec["node"] == "node-secret-7" and rec["model"] == "m1"
    assert rec["status"] == 200 and rec["completion_tokens"] == 3 and rec["ttft_ms"] is not None
    assert rec["privacy"] == "coordinator-visible"
    [model] = view["models"]
    assert model["model"] == "m1" and model["nodes"] == 1 and model["slots"] == 4 and model["free_slots"] == 4
    assert model["node_ids"] == ["node-secret-7"] and model["requests"] == 1 and sum(model["series"]["requests"]) == 1
    assert view["stats"]["requests"] == 1 and view["stats"]["tokens_served"] == 7 and view["stats"]["active_nodes"] == 1


def test_public_view_names_no_node_and_no_request(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _register(ws)
        rid = _serve_one(coordinator, ws)
        resp = coordinator.client.get("/v1/network", headers=coordinator.auth)
    assert resp.status_code == 200
    assert "node-secret-7" not in resp.text and rid not in resp.text
    view = resp.json()
    assert view["view"] == "public" and "nodes" not in view
    assert view["models"][0]["nodes"] == 1 and view["models"][0]["free_slots"] == 4
    assert view["recent"][0]["status"] == 200 and view["stats"]["active_nodes"] == 1


def test_refusals_and_failures_are_counted_per_model(coordinator: Coordinator) -> None:
    admin = _admin(coordinator)
    assert (
        coordinator.client.post(
            "/v1/chat/completions", json={**GOOD, "model": "nobody-serves-this"}, headers=coordinator.auth
        ).status_code
        == 404
    )
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _register(ws)
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Error(message="busy", code="rate_limit_exceeded", status=429, request_id=req.request_id)))
        t.join(10)
        assert out["status"] == 429
    # The node left: its model is known but unserved now.
    assert coordinator.client.post("/v1/chat/completions", json=GOOD, headers=coordinator.auth).status_code == 503
    view = coordinator.client.get("/v1/admin/fleet", headers=admin).json()
    assert [(r["model"], r["status"]) for r in view["recent"]] == [
        ("nobody-serves-this", 404),
        ("m1", 429),
        ("m1", 503),
    ]
    assert [m["model"] for m in view["models"]] == ["m1"]  # a made-up model name gets no routing row
    m1 = view["models"][0]
    assert m1["nodes"] == 0 and m1["rejected"] == 1 and m1["rate_429"] == 0.5 and m1["failed"] == 1
    assert view["nodes"] == [] and view["stats"]["failed"] == 3


def test_requests_waiting_for_a_slot_show_as_queued(coordinator: Coordinator) -> None:
    full = Capacity(capacity_seq=1, slots=(SlotCapacity(model="m1", max_concurrency=1),))
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        reg = Register(node_id="node-small", models=(ModelInfo(id="m1"),), capacity=full)  # type: ignore[arg-type]
        ws.send_bytes(encode(reg))
        decode(ws.receive_bytes())
        threads = [_stream_in_thread(coordinator, GOOD) for _ in range(3)]
        deadline = time.monotonic() + 10
        view = coordinator.client.get("/v1/admin/fleet", headers=_admin(coordinator)).json()
        while view["models"][0]["queue_depth"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            view = coordinator.client.get("/v1/admin/fleet", headers=_admin(coordinator)).json()
        for _ in threads:  # one slot: each request is dispatched when the one before it completes
            req = decode(ws.receive_bytes())
            ws.send_bytes(
                encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=1, completion_tokens=1)))
            )
        for t, _ in threads:
            t.join(10)
    [m1] = view["models"]
    assert (m1["slots"], m1["free_slots"], m1["queue_depth"]) == (1, 0, 2)
    assert view["nodes"][0]["active"] == 1 and view["stats"]["in_flight"] == 1


def test_cost_and_earnings_paid_come_from_the_ledger(coordinator: Coordinator) -> None:
    admin = _admin(coordinator)
    price = {"model": "m1", "input_usd_per_million": 0, "output_usd_per_million": 1000}
    assert coordinator.client.post("/v1/admin/prices", json=price, headers=admin).status_code == 200
    credit = coordinator.client.post(
        "/v1/admin/credit", json={"account_id": _account(coordinator), "amount_usd": 1}, headers=admin
    )
    assert credit.status_code == 200, credit.text
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _register(ws)
        _serve_one(coordinator, ws, tokens=3)
        view = coordinator.client.get("/v1/admin/fleet", headers=admin).json()
    [rec] = view["recent"]
    assert rec["cost_micro_usd"] == 3000  # 3 tokens at $1,000 per million
    assert view["stats"]["earnings_paid_micro_usd"] == 2700  # the provider's 90 %


def _account(c: Coordinator) -> str:
    return str(c.client.get("/v1/balance", headers=c.auth).json()["account_id"])
