"""Every admitted request is settled exactly once, whatever its ending."""

from __future__ import annotations

from darkbloom.protocol import Chunk, Complete, Error, Usage, decode, encode
from tests.server.conftest import Coordinator, RecordingHook, register
from tests.server.test_provider_socket import GOOD, _stream_in_thread


def test_completed_request_settles_once_with_usage(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, {**GOOD, "stream": False})
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="x")))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=4, completion_tokens=1))))
        t.join(10)
    assert out["status"] == 200
    assert hook.admitted == [req.request_id]
    assert hook.settled == [(req.request_id, "completed", Usage(4, 1), "node-a")]


def test_error_before_first_chunk_settles_failed(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Error(message="boom", request_id=req.request_id)))
        t.join(10)
    assert out["status"] == 502
    assert [(s[0], s[1]) for s in hook.settled] == [(req.request_id, "failed")]


def test_unknown_model_is_admitted_then_settled_failed(coordinator: Coordinator, hook: RecordingHook) -> None:
    resp = coordinator.client.post("/v1/chat/completions", json={**GOOD, "model": "zzz"}, headers=coordinator.auth)
    assert resp.status_code == 404
    assert len(hook.admitted) == 1
    assert [s[1] for s in hook.settled] == ["failed"]


def test_node_lost_mid_stream_settles_failed_once(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="x")))
    t.join(10)
    assert out["status"] == 200
    assert [(s[0], s[1]) for s in hook.settled] == [(req.request_id, "failed")]


def test_count_tokens_asks_the_node_for_a_count_and_is_never_billed(coordinator: Coordinator, hook: RecordingHook) -> None:
    import threading

    body = {"model": "m1", "system": "be brief", "messages": [{"role": "user", "content": "hi"}]}
    for old_node in (False, True):
        out: dict = {}  # type: ignore[type-arg]

        def run() -> None:
            resp = coordinator.client.post("/v1/messages/count_tokens", json=body, headers=coordinator.auth)
            out["status"], out["body"] = resp.status_code, resp.json()

        with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
            register(ws)
            t = threading.Thread(target=run)
            t.start()
            req = decode(ws.receive_bytes())
            assert req.params.count_only and req.params.max_tokens == 1
            assert [m.role for m in req.messages] == ["system", "user"]
            if old_node:  # one that predates count_only generates its one token first
                ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="x")))
            done = Usage(prompt_tokens=17, completion_tokens=1 if old_node else 0)
            ws.send_bytes(encode(Complete(request_id=req.request_id, usage=done)))
            t.join(10)
        assert (out["status"], out["body"]) == (200, {"input_tokens": 17})
    assert hook.admitted == [] and hook.settled == []  # no hold, no charge, no rate-limit tokens
