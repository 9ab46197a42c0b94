"""Sealed requests through the coordinator: routed among recipients, relayed as ciphertext.

Each rejection (tampered ciphertext, wrong recipient, forged receipt) must
reach the consumer as a clear error and settle the request as failed, so
nothing is charged.
"""

from __future__ import annotations

import dataclasses
import json

import msgspec
from nacl import public

from darkbloom.client.receipts import verify_receipt_doc
from darkbloom.client.sealing import seal_chat, verify_provider_keys
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import Complete, ToolCall, Usage
from darkbloom.protocol.sealed import (
    ReceiptPayload,
    VerifiableReceipt,
    b64d,
    b64e,
    decode_piece,
    open_chunk,
    sign_receipt,
)
from tests.server.attestation.conftest import FakeNode, custom_coordinator, post_in_thread, provider_keys, sse_events
from tests.server.conftest import Coordinator, RecordingHook

BODY = {"model": "m1", "messages": [{"role": "user", "content": "a secret prompt"}], "max_tokens": 16}


def _seal(coordinator: Coordinator, k: int = 3, body: dict | None = None):  # type: ignore[no-untyped-def]
    keys = verify_provider_keys(provider_keys(coordinator), "m1")
    return seal_chat(body or BODY, keys, k)


def _decrypt(call, out) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    events = sse_events(out["text"])
    key = call.chunk_key(out["headers"]["x-provider-id"])
    text = "".join(decode_piece(open_chunk(key, e["seq"], e["sealed"])).text for e in events if e["type"] == "chunk")
    return text, events[-1]


def test_sealed_request_is_relayed_as_ciphertext_and_opened_by_the_client(
    coordinator: Coordinator, hook: RecordingHook
) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        call = _seal(coordinator)
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        req = node.request()
        assert req.sealed is not None and req.messages == () and req.params.max_tokens == 16
        node.serve(req, ["Hel", "lo"])
        t.join(10)
    assert out["status"] == 200, out["text"]
    assert "secret" not in out["text"] and "Hello" not in out["text"]
    text, done = _decrypt(call, out)
    assert text == "Hello"
    assert out["headers"]["x-darkbloom-privacy"] == "sealed"
    assert out["headers"]["x-provider-id"] == node.node_id
    assert out["headers"]["x-provider-attested"] == "true"
    assert out["headers"]["x-provider-trust-level"] == "software"
    assert done["type"] == "complete" and done["usage"]["completion_tokens"] == 3
    payload = verify_receipt_doc(
        msgspec.convert(done["receipt"], VerifiableReceipt),
        expect_signing_key=node.keys.signing_public,
        expect_sealed_hash=call.sealed_hash,
    )
    assert payload.request_id == done["id"] and payload.weight_hash == "ab" * 32
    assert hook.settled == [(done["id"], "completed", Usage(prompt_tokens=7, completion_tokens=3), node.node_id)]
    # The receipt is also kept for the consumer to fetch later.
    got = coordinator.client.get(f"/v1/receipts/{done['id']}", headers=coordinator.auth)
    assert got.status_code == 200 and got.json()["receipt"] == done["receipt"]["receipt"]


def test_plain_request_is_sealed_by_the_coordinator_to_the_chosen_node(
    coordinator: Coordinator, hook: RecordingHook
) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        t, out = post_in_thread(coordinator, {**BODY, "stream": False})
        req = node.request()
        # The hop to the node is sealed even for a coordinator-visible request.
        assert req.sealed is not None and req.messages == ()
        assert list(req.sealed.recipients) == [node.node_id]
        node.serve(req, ["pl", "ain"])
        t.join(10)
    assert out["status"] == 200, out["text"]
    assert json.loads(out["text"])["choices"][0]["message"]["content"] == "plain"
    assert out["headers"]["x-darkbloom-privacy"] == "coordinator-visible"
    assert out["headers"]["x-provider-attested"] == "true"
    receipt = msgspec.json.decode(b64d(out["headers"]["x-darkbloom-receipt"], "receipt"), type=VerifiableReceipt)
    assert verify_receipt_doc(receipt).completion_tokens == 3
    assert [s[1] for s in hook.settled] == ["completed"]


def test_tampered_ciphertext_is_rejected_and_nothing_is_charged(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        call = _seal(coordinator)
        ct = bytearray(b64d(call.request["envelope"]["ciphertext"], "ct"))
        ct[5] ^= 0x01
        call.request["envelope"]["ciphertext"] = b64e(bytes(ct))
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        node.serve(node.request(), ["never"])
        t.join(10)
    assert out["status"] == 400
    err = json.loads(out["text"])["error"]
    assert err["code"] == "sealed_open_failed" and "failed authentication" in err["message"]
    assert [s[1:3] for s in hook.settled] == [("failed", None)]


def test_wrong_recipient_key_is_rejected_and_nothing_is_charged(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        keys = verify_provider_keys(provider_keys(coordinator), "m1")
        # Addressed to the node's id but sealed to someone else's key.
        impostor = public.PrivateKey.generate().public_key
        keys = [dataclasses.replace(k, encryption_key=bytes(impostor)) for k in keys]
        call = seal_chat(BODY, keys)
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        node.serve(node.request(), ["never"])
        t.join(10)
    assert out["status"] == 400
    assert "wrong recipient key" in json.loads(out["text"])["error"]["message"]
    assert [s[1:3] for s in hook.settled] == [("failed", None)]


def test_envelope_for_nodes_that_are_not_connected_is_refused(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        FakeNode(ws).join()
        other = NodeKeys.generate()
        from darkbloom.protocol.sealed import seal_request

        env, _ = seal_request(json.dumps(BODY).encode(), "m1", {other.node_id: bytes(other.encryption_key.public_key)})
        body = json.dumps({"model": "m1", "max_tokens": 16, "envelope": msgspec.to_builtins(env)}).encode()
        t, out = post_in_thread(coordinator, body, sealed=True)
        t.join(10)
    assert out["status"] == 503
    assert json.loads(out["text"])["error"]["code"] == "recipients_unavailable"
    assert [s[1] for s in hook.settled] == ["failed"]


def test_forged_receipt_fails_the_request_and_nothing_is_charged(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        call = _seal(coordinator)
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        req = node.request()
        from darkbloom.node.attestation import open_sealed

        _, _, sealer = open_sealed(req, node.keys)
        node.stream(req, sealer, ["x"])
        # Signed by a key that is not the node's attested one, claiming fewer tokens.
        forger = NodeKeys.generate()
        fake = ReceiptPayload(req.request_id, sealer.sealed_hash, "m1", "", 1, 1, node.node_id, 0.0)
        node.send(
            Complete(
                request_id=req.request_id,
                usage=Usage(1, 1),
                receipt=msgspec.json.encode(sign_receipt(fake, forger.signing_key)).decode(),
            )
        )
        t.join(10)
    events = sse_events(out["text"])
    assert events[-1]["type"] == "error"
    assert "receipt was rejected" in events[-1]["error"]["message"] and events[-1]["error"]["code"] == "invalid_receipt"
    assert [s[1:3] for s in hook.settled] == [("failed", None)]


def test_failover_to_the_next_recipient_when_the_first_drops_before_its_first_token(
    coordinator: Coordinator, hook: RecordingHook
) -> None:
    with (
        coordinator.client.websocket_connect("/v1/provider/ws") as ws_a,
        coordinator.client.websocket_connect("/v1/provider/ws") as ws_b,
    ):
        a, b = FakeNode(ws_a), FakeNode(ws_b)
        a.join()
        b.join()
        call = _seal(coordinator, k=2)
        assert set(call.recipients) == {a.node_id, b.node_id}
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        # Whichever node got it first drops before its first token; the other must get the same envelope.
        first, second = (a, b) if coordinator.client.portal.call(_owner, coordinator, call) == a.node_id else (b, a)
        req1 = first.request()
        first.ws.close()
        req2 = second.request()
        # The same envelope, under the request's failover id (the node signs the id it was sent).
        assert req2.sealed == req1.sealed and req2.request_id.startswith(req1.request_id)
        second.serve(req2, ["still ", "here"])
        t.join(10)
    assert out["status"] == 200, out["text"]
    assert out["headers"]["x-provider-id"] == second.node_id
    text, done = _decrypt(call, out)
    assert text == "still here" and done["type"] == "complete"
    assert [(s[1], s[3]) for s in hook.settled] == [("completed", second.node_id)]


async def _owner(coordinator: Coordinator, call) -> str:  # type: ignore[no-untyped-def]
    import asyncio

    fleet = coordinator.client.app.state.fleet
    for _ in range(500):
        for flight in list(fleet.inflight.values()):
            return flight.node_id
        await asyncio.sleep(0.01)
    raise TimeoutError("request never dispatched")


def test_sealed_body_errors_are_clear_400s(coordinator: Coordinator) -> None:
    from darkbloom.protocol.sealed import SEALED_CONTENT_TYPE

    headers = {**coordinator.auth, "Content-Type": SEALED_CONTENT_TYPE}
    for body, needle in (
        (b"", "empty"),
        (b"{", "invalid JSON"),
        (b'{"model": "m\xff1"}', "UTF-8"),
        (b'{"model": "m1"}', "envelope"),
        (
            json.dumps(
                {"model": "m1", "envelope": {"version": 9, "ciphertext": "", "nonce": "", "recipients": {}}}
            ).encode(),
            "version 9",
        ),
        (
            json.dumps(
                {
                    "model": "m1",
                    "envelope": {"version": 1, "ciphertext": "!!", "nonce": b64e(bytes(24)), "recipients": {"n": "x"}},
                }
            ).encode(),
            "base64",
        ),
    ):
        resp = coordinator.client.post("/v1/chat/completions", content=body, headers=headers)
        assert resp.status_code == 400, (body, resp.text)
        assert needle in resp.json()["error"]["message"], resp.text


def test_failover_never_leaves_the_recipients(coordinator: Coordinator, hook: RecordingHook) -> None:
    with (
        coordinator.client.websocket_connect("/v1/provider/ws") as ws_a,
        coordinator.client.websocket_connect("/v1/provider/ws") as ws_b,
        coordinator.client.websocket_connect("/v1/provider/ws") as ws_c,
    ):
        a, b, c = FakeNode(ws_a), FakeNode(ws_b), FakeNode(ws_c)
        for node in (a, b, c):
            node.join()
        keys = [k for k in verify_provider_keys(provider_keys(coordinator), "m1") if k.node_id != c.node_id]
        call = seal_chat(BODY, keys, k=2)
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        first, second = (a, b) if coordinator.client.portal.call(_owner, coordinator, call) == a.node_id else (b, a)
        first.request()
        first.ws.close()
        # Both recipients are gone now; a third node serves the model but was not sealed to.
        second.request()
        second.ws.close()
        t.join(10)
        served_by_c = coordinator.client.app.state.fleet.registry.nodes[c.node_id].served
    assert served_by_c == 0
    assert out["status"] == 502, out["text"]
    assert [s[1] for s in hook.settled] == ["failed"]

def test_an_unattested_node_serves_plain_requests_and_says_so(coordinator: Coordinator) -> None:
    from darkbloom.protocol import Chunk, decode, encode
    from tests.server.conftest import register

    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
        t, out = post_in_thread(coordinator, {**BODY, "stream": False})
        req = decode(ws.receive_bytes())
        assert req.sealed is None and req.messages[0].content == "a secret prompt"
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="ok")))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(1, 1))))
        t.join(10)
    assert out["status"] == 200
    h = out["headers"]
    assert (h["x-darkbloom-privacy"], h["x-provider-attested"], h["x-provider-trust-level"]) == (
        "coordinator-visible",
        "false",
        "none",
    )
    assert "x-darkbloom-receipt" not in h


def test_require_attestation_refuses_nodes_without_a_bundle(tmp_path, hook: RecordingHook) -> None:  # type: ignore[no-untyped-def]
    import pytest
    from starlette.websockets import WebSocketDisconnect

    from darkbloom.protocol import Error, ModelInfo, Register, decode, encode

    with (
        custom_coordinator(tmp_path, hook, require_attestation=True) as coordinator,
        coordinator.client.websocket_connect("/v1/provider/ws") as ws,
    ):
        ws.send_bytes(encode(Register(node_id="node-a", models=(ModelInfo(id="m1"),))))  # type: ignore[arg-type]
        err = decode(ws.receive_bytes())
        assert isinstance(err, Error) and "only accepts attested nodes" in err.message
        with pytest.raises(WebSocketDisconnect):
            ws.receive_bytes()


CALL = ToolCall(id="call_1", name="get_weather_secret", arguments='{"city": "Atlantis"}')


def test_tool_calls_are_sealed_in_sealed_mode_and_opened_in_compatible_mode(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        call = _seal(coordinator)
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        node.serve(node.request(), ["calling ", CALL])
        t.join(10)
        assert out["status"] == 200, out["text"]
        assert "get_weather_secret" not in out["text"] and "Atlantis" not in out["text"]
        key = call.chunk_key(out["headers"]["x-provider-id"])
        pieces = [
            decode_piece(open_chunk(key, e["seq"], e["sealed"]))
            for e in sse_events(out["text"])
            if e["type"] == "chunk"
        ]
        assert [p.tool_calls for p in pieces] == [(), (CALL,)]

        # Compatible mode: the coordinator opens the chunk and the SDK shape carries the call.
        t, out = post_in_thread(coordinator, {**BODY, "stream": False})
        node.serve(node.request(), ["", CALL])
        t.join(10)
    assert out["status"] == 200, out["text"]
    [tool_call] = json.loads(out["text"])["choices"][0]["message"]["tool_calls"]
    assert tool_call["function"] == {"name": "get_weather_secret", "arguments": '{"city": "Atlantis"}'}
