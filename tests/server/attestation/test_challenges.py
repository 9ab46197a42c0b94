"""Registration bundles and challenges over the real provider socket."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from starlette.websockets import WebSocketDisconnect

from darkbloom.client.sealing import seal_chat, verify_provider_keys
from darkbloom.protocol import AttestationResponse, Error, ModelInfo, Register, decode, encode
from darkbloom.protocol.sealed import SignedAttestation
from tests.server.attestation.conftest import FakeNode, custom_coordinator, post_in_thread, provider_keys
from tests.server.conftest import Coordinator, RecordingHook

BODY = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_attested_node_is_fenced_until_it_answers_its_first_challenge(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.register()
        challenge = node.challenge()
        assert len(bytes.fromhex(challenge.nonce)) == 32
        # Registered but unproven: not listed, not routable.
        assert provider_keys(coordinator)["data"] == []
        resp = coordinator.client.post("/v1/chat/completions", json=BODY, headers=coordinator.auth)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "model_unavailable"
        status = node.answer(challenge)
        assert (status.status, status.trust_level) == ("trusted", "software")
        listing = provider_keys(coordinator)
    [entry] = listing["data"]
    assert entry["node_id"] == node.node_id and entry["encryption_key"] == node.keys.encryption_public
    assert entry["weight_hash"] == "ab" * 32
    # The client can check the listing itself.
    assert [k.node_id for k in verify_provider_keys(listing, "m1")] == [node.node_id]


def test_replayed_challenge_answer_fences_the_node_and_sealed_requests_are_refused(
    coordinator: Coordinator, hook: RecordingHook
) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        call = seal_chat(BODY, verify_provider_keys(provider_keys(coordinator), "m1"))
        coordinator.client.portal.call(coordinator.client.app.state.attestation.challenge_now, node.node_id)
        node.challenge()
        old = node.answers[0]
        node.send(AttestationResponse(nonce=old.nonce, signature=old.signature, state=old.state))
        status = node.trust_status()
        assert status.status == "fenced" and "replayed" in status.reason
        assert provider_keys(coordinator)["data"] == []
        metrics = coordinator.client.get("/metrics").text
        assert 'darkbloom_attestation_failures_total{reason="replayed"} 1.0' in metrics
        assert 'darkbloom_nodes_connected{trust_level="software"} 1.0' in metrics
        t, out = post_in_thread(coordinator, json.dumps(call.request).encode(), sealed=True)
        t.join(10)
    assert out["status"] == 503
    assert json.loads(out["text"])["error"]["code"] == "recipients_unavailable"
    assert [s[1:3] for s in hook.settled] == [("failed", None)]


def test_a_node_passing_again_after_a_failure_is_routable_again(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        portal = coordinator.client.portal
        portal.call(coordinator.client.app.state.attestation.challenge_now, node.node_id)
        challenge = node.challenge()
        bad = node.attestor.answer(challenge, ["m1"], 0)
        node.send(msgspec.structs.replace(bad, signature=node.answers[0].signature))
        assert node.trust_status().status == "fenced"
        portal.call(coordinator.client.app.state.attestation.challenge_now, node.node_id)
        assert node.answer(node.challenge()).status == "trusted"
        assert len(provider_keys(coordinator)["data"]) == 1


def test_three_failures_make_a_node_untrusted(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.join()
        old = node.answers[0]
        for _ in range(3):
            node.send(old)
            status = node.trust_status()
        assert status.status == "untrusted"
        portal = coordinator.client.portal
        portal.call(coordinator.client.app.state.attestation.challenge_now, node.node_id)
        assert node.answer(node.challenge()).status == "untrusted"
        assert provider_keys(coordinator)["data"] == []


def test_expired_bundle_is_refused_at_registration(coordinator: Coordinator, hook: RecordingHook) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.send(
            Register(
                node_id=node.node_id,
                models=(ModelInfo(id="m1"),),
                attestation=node.attestor.bundle(now=time.time() - 3600),
            )
        )  # type: ignore[arg-type]
        err = node.recv()
        assert isinstance(err, Error) and err.code == "attestation_invalid"
        assert "expired" in err.message and "3600 s ago" in err.message
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_bytes()
    assert info.value.code == 1008
    assert (
        'darkbloom_attestation_failures_total{reason="bundle_expired"} 1.0' in coordinator.client.get("/metrics").text
    )
    resp = coordinator.client.post("/v1/chat/completions", json=BODY, headers=coordinator.auth)
    assert resp.status_code == 404
    assert [s[1:3] for s in hook.settled] == [("failed", None)]


@pytest.mark.parametrize("tamper", ["signature", "node_id", "payload"])
def test_forged_bundles_are_refused(coordinator: Coordinator, tamper: str) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        signed = node.attestor.bundle()
        node_id = node.node_id
        if tamper == "signature":
            signed = SignedAttestation(payload=signed.payload, signature=FakeNode(ws).attestor.bundle().signature)
        elif tamper == "node_id":
            node_id = "node-0000000000000000"
        else:
            signed = SignedAttestation(
                payload=signed.payload.replace('"Test Chip"', '"M4 Ultra"'), signature=signed.signature
            )
        ws.send_bytes(encode(Register(node_id=node_id, models=(ModelInfo(id="m1"),), attestation=signed)))  # type: ignore[arg-type]
        err = decode(ws.receive_bytes())
        assert isinstance(err, Error) and err.code == "attestation_invalid", err
        with pytest.raises(WebSocketDisconnect):
            ws.receive_bytes()


def test_unanswered_challenge_fences_the_node(tmp_path, hook: RecordingHook) -> None:  # type: ignore[no-untyped-def]
    with (
        custom_coordinator(tmp_path, hook, challenge_timeout_s=0.2) as coordinator,
        coordinator.client.websocket_connect("/v1/provider/ws") as ws,
    ):
        node = FakeNode(ws)
        node.join()
        coordinator.client.portal.call(coordinator.client.app.state.attestation.challenge_now, node.node_id)
        node.challenge()  # ... and never answered
        status = node.trust_status()
        assert status.status == "fenced" and "no answer to the challenge within 0.2 s" in status.reason
        assert provider_keys(coordinator)["data"] == []


class _Evidence:
    def evidence(self, signing_public: str, encryption_public: str) -> str:
        return "enclave-evidence-for-" + signing_public


class _Verifier:
    def verify(self, bundle) -> bool:  # type: ignore[no-untyped-def]
        return bundle.hardware_evidence == "enclave-evidence-for-" + bundle.signing_key


@pytest.mark.parametrize("verifier", [None, _Verifier()])
def test_hardware_trust_needs_a_verifier_that_accepts_the_evidence(coordinator: Coordinator, verifier) -> None:  # type: ignore[no-untyped-def]
    coordinator.client.app.state.attestation.hardware_verifier = verifier
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        node = FakeNode(ws)
        node.attestor.hardware_attester = _Evidence()
        node.register()
        status = node.answer(node.challenge())
    assert status.trust_level == ("hardware" if verifier else "software")
