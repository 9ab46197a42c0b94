"""The provider WebSocket: relaying frames, malformed input, a node going away."""

from __future__ import annotations

import json
import threading

from starlette.websockets import WebSocketDisconnect
import pytest

from darkbloom.protocol import Chunk, Complete, Error, Heartbeat, InferenceRequest, ModelInfo, Register, Usage, decode, decode_many, encode, join
from tests.server.conftest import Coordinator, register

GOOD = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _stream_in_thread(coordinator: Coordinator, body: dict) -> tuple[threading.Thread, dict]:  # type: ignore[type-arg]
    out: dict = {}  # type: ignore[type-arg]

    def run() -> None:
        resp = coordinator.client.post("/v1/chat/completions", json=body, headers=coordinator.auth)
        out["status"] = resp.status_code
        out["text"] = resp.text

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _events(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_chunks_are_relayed_in_order_with_usage(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, {**GOOD, "stream_options": {"include_usage": True}})
        req = decode(ws.receive_bytes())
        assert isinstance(req, InferenceRequest) and req.model == "m1"
        for i, piece in enumerate(["Hel", "lo", " there"]):
            ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=i, text=piece)))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=5, completion_tokens=3))))
        t.join(10)
    events = _events(out["text"])
    assert out["status"] == 200
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}
    }


def test_malformed_frame_gets_an_error_frame_and_the_socket_stays_usable(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        for junk in (b"not json", b"{}", b'{"type": "warp_drive"}', b"\x00" * 1000):
            ws.send_bytes(junk)
            err = decode(ws.receive_bytes())
            assert isinstance(err, Error) and err.code == "bad_frame"
        ws.send_bytes(encode(Heartbeat()))
        # Still registered and still routable after the junk.
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        assert isinstance(req, InferenceRequest)
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(1, 1))))
        t.join(10)
    assert out["status"] == 200 and "ok" in out["text"]


def test_first_frame_must_be_register(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        ws.send_bytes(b"garbage")
        err = decode(ws.receive_bytes())
        assert isinstance(err, Error)
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
    assert info.value.code == 1008


def test_one_bad_node_does_not_disturb_another(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as good:
        register(good, node_id="good")
        with coordinator.client.websocket_connect("/v1/provider/ws") as bad:
            register(bad, node_id="bad", model="m2")
            bad.send_bytes(b"\xff" * 2048)
            decode(bad.receive_bytes())
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(good.receive_bytes())
        good.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="fine")))
        good.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(1, 1))))
        t.join(10)
    assert out["status"] == 200 and "fine" in out["text"]


def test_node_lost_mid_stream_gives_a_terminal_error_event(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="partial")))
    t.join(10)
    events = _events(out["text"])
    assert out["status"] == 200
    assert "[DONE]" not in events
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "partial"
    last = json.loads(events[-1])
    assert last["error"]["message"] == "provider disconnected"


def test_error_before_first_chunk_is_a_clean_json_error(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Error(message="prompt too long", code="context_length_exceeded", status=400, request_id=req.request_id)))
        t.join(10)
    assert out["status"] == 400
    assert json.loads(out["text"])["error"]["code"] == "context_length_exceeded"


def test_a_node_silent_mid_stream_ends_the_stream_with_a_timeout_after_request_timeout_s(tmp_path, hook) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import time

    from starlette.testclient import TestClient

    from darkbloom.server.app import create_app
    from darkbloom.server.auth.keys import create_key_in
    from darkbloom.server.settings import Settings

    settings = Settings(home=tmp_path, db_url=f"sqlite:///{tmp_path / 'c.db'}", request_timeout_s=0.5)
    key, _ = asyncio.run(create_key_in(settings.db_url))
    with TestClient(create_app(settings, hooks=[hook])) as client:
        coordinator = Coordinator(client, key, settings)
        with client.websocket_connect("/v1/provider/ws") as ws:
            register(ws)
            t, out = _stream_in_thread(coordinator, GOOD)
            req = decode(ws.receive_bytes())
            started = time.monotonic()
            for i in range(3):  # chunks keep coming faster than the timeout: no timeout fires
                ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=i, text=f"p{i}")))
                time.sleep(0.3)
            t.join(10)  # then silence
            waited = time.monotonic() - started
    events = _events(out["text"])
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:3]] == ["p0", "p1", "p2"]
    last = json.loads(events[-1])
    assert last["error"]["code"] == "timeout" and "[DONE]" not in events
    assert 0.6 + 0.5 - 0.05 <= waited < 5  # the last chunk at 0.6 s, then 0.5 s of silence


def _requests_from(ws, n: int, *, batches: bool) -> list[InferenceRequest]:  # type: ignore[no-untyped-def]
    reqs: list[InferenceRequest] = []
    while len(reqs) < n:
        data = ws.receive_bytes()
        if not batches:
            assert not data.startswith(b"[")  # a node that never said it reads batches never gets one
        reqs += [f for f in decode_many(data) if isinstance(f, InferenceRequest)]
    return reqs


@pytest.mark.parametrize("batches", [True, False], ids=["batching-node", "plain-node"])
def test_a_burst_is_relayed_whether_or_not_the_node_batches_frames(coordinator: Coordinator, batches: bool) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        ws.send_bytes(encode(Register(node_id="n", models=(ModelInfo(id="m1"),), frame_batches=batches)))  # type: ignore[arg-type]
        registered = decode(ws.receive_bytes())
        assert type(registered).__name__ == "Registered" and registered.frame_batches  # type: ignore[union-attr]  # it reads ours
        runs = [_stream_in_thread(coordinator, GOOD) for _ in range(8)]
        reqs = _requests_from(ws, 8, batches=batches)
        # The node answers every request's token and end in one message, as one decode step would.
        frames = [encode(Chunk(request_id=r.request_id, seq=0, text=f"answer-{i}")) for i, r in enumerate(reqs)]
        frames += [encode(Complete(request_id=r.request_id, usage=Usage(3, 1))) for r in reqs]
        ws.send_bytes(join(frames))
        for t, _ in runs:
            t.join(10)
    texts = sorted("".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in _events(out["text"])[:-1]) for _, out in runs)
    assert all(out["status"] == 200 for _, out in runs)
    assert texts == sorted(f"answer-{i}" for i in range(8))


def test_a_malformed_batch_is_refused_whole_and_the_socket_stays_usable(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        ws.send_bytes(b'[{"type": "heartbeat"}, {"type": "warp_drive"}]')
        err = decode(ws.receive_bytes())
        assert isinstance(err, Error) and err.code == "bad_frame"
        t, out = _stream_in_thread(coordinator, GOOD)
        req = decode(ws.receive_bytes())
        ws.send_bytes(join([encode(Chunk(request_id=req.request_id, seq=0, text="ok")), encode(Complete(request_id=req.request_id, usage=Usage(1, 1)))]))
        t.join(10)
    assert out["status"] == 200 and "ok" in out["text"]
