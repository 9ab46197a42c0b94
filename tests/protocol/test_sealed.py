"""The privacy wire formats: envelopes, chunks, bundles, receipts; every forgery is refused."""

from __future__ import annotations

import json
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import public

from darkbloom.node.attestation import NodeAttestor, open_sealed
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import Hardware, InferenceRequest, SamplingParams, SealedEnvelope, Usage
from darkbloom.protocol.sealed import (
    AttestationError,
    SealedError,
    SignedAttestation,
    b64d,
    b64e,
    decode_receipt,
    open_chunk,
    open_request,
    response_key,
    seal_chunk,
    seal_request,
    sealed_plaintext_bytes,
    verify_attestation,
    verify_receipt,
)

BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}).encode()


def _keys(n: int) -> list[NodeKeys]:
    return [NodeKeys.generate() for _ in range(n)]


def test_every_recipient_opens_the_same_body_and_no_one_else_does() -> None:
    keys = _keys(3)
    env, ck = seal_request(BODY, "m", {k.node_id: bytes(k.encryption_key.public_key) for k in keys})
    for k in keys:
        assert open_request(env, "m", k.node_id, k.encryption_key) == (BODY, ck)
    stranger = NodeKeys.generate()
    with pytest.raises(SealedError, match="not addressed to this node"):
        open_request(env, "m", stranger.node_id, stranger.encryption_key)
    with pytest.raises(SealedError, match="wrong recipient key"):
        open_request(env, "m", keys[0].node_id, stranger.encryption_key)


def test_the_coordinator_knows_the_sealed_body_size_exactly() -> None:
    [k] = _keys(1)
    for body in (b"", b"x", b"xy", b"xyz", BODY):
        env, _ = seal_request(body, "m", {k.node_id: bytes(k.encryption_key.public_key)})
        assert sealed_plaintext_bytes(env) == len(body)


def test_changing_the_model_hint_or_any_ciphertext_byte_breaks_the_seal() -> None:
    [k] = _keys(1)
    env, _ = seal_request(BODY, "m", {k.node_id: bytes(k.encryption_key.public_key)})
    with pytest.raises(SealedError, match="failed authentication"):
        open_request(env, "cheaper-model", k.node_id, k.encryption_key)
    ct = b64d(env.ciphertext, "ct")
    for i in (0, len(ct) // 2, len(ct) - 1):
        bad = bytearray(ct)
        bad[i] ^= 0x80
        with pytest.raises(SealedError, match="failed authentication"):
            open_request(msgspec.structs.replace(env, ciphertext=b64e(bytes(bad))), "m", k.node_id, k.encryption_key)


def test_chunks_open_only_in_order_under_their_own_node_key() -> None:
    ck = bytes(32)
    ka, kb = response_key(ck, "node-a"), response_key(ck, "node-b")
    assert ka != kb
    sealed = seal_chunk(ka, 3, "piece")
    assert open_chunk(ka, 3, sealed) == "piece"
    with pytest.raises(SealedError):
        open_chunk(ka, 4, sealed)  # reordered
    with pytest.raises(SealedError):
        open_chunk(kb, 3, sealed)  # another node's key
    assert seal_chunk(ka, 0, "same") != seal_chunk(ka, 0, "same")  # random nonces: never reused


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(-2, 3),
    ct=st.text(max_size=40),
    nonce=st.text(max_size=40),
    recipients=st.dictionaries(st.text(max_size=8), st.text(max_size=90), max_size=3),
)
def test_malformed_envelopes_raise_only_sealed_error(
    version: int, ct: str, nonce: str, recipients: dict[str, str]
) -> None:
    [k] = _keys(1)
    env = SealedEnvelope(version=version, ciphertext=ct, nonce=nonce, recipients=recipients)
    with pytest.raises(SealedError):
        open_request(env, "m", next(iter(recipients), k.node_id), k.encryption_key)


def _attestor() -> NodeAttestor:
    return NodeAttestor(NodeKeys.generate(), Hardware(chip="c"), {"m": "11" * 32}, code_hash="22" * 32)


def test_bundle_verifies_and_names_its_node_by_key() -> None:
    att = _attestor()
    bundle = verify_attestation(att.bundle(), now=time.time(), max_age_s=300)
    assert bundle.node_id == att.node_id and bundle.weight_hash("m") == "11" * 32 and bundle.trust_level == "software"


def test_expired_future_and_altered_bundles_are_refused() -> None:
    att = _attestor()
    with pytest.raises(AttestationError, match="expired"):
        verify_attestation(att.bundle(now=time.time() - 301), now=time.time(), max_age_s=300)
    with pytest.raises(AttestationError, match="future"):
        verify_attestation(att.bundle(now=time.time() + 3600), now=time.time(), max_age_s=300)
    signed = att.bundle()
    with pytest.raises(AttestationError, match="does not verify"):
        verify_attestation(SignedAttestation(signed.payload.replace('"c"', '"d"'), signed.signature))
    # A bundle re-signed by another key cannot keep the victim's node id.
    other = NodeKeys.generate()
    doc = json.loads(signed.payload)
    doc["signing_key"] = other.signing_public
    from darkbloom.protocol.sealed import AttestationBundle, sign_attestation

    forged = sign_attestation(msgspec.convert(doc, AttestationBundle), other.signing_key)
    with pytest.raises(AttestationError, match="is not the one its signing key names"):
        verify_attestation(forged)


def test_receipts_verify_and_forgeries_do_not() -> None:
    att = _attestor()
    bundle = verify_attestation(att.bundle())
    receipt = decode_receipt(att.receipt("req-1", "m", "ff" * 32, Usage(5, 7), "stop"))
    payload = verify_receipt(receipt, bundle)
    assert (payload.request_id, payload.prompt_tokens, payload.completion_tokens, payload.weight_hash) == (
        "req-1",
        5,
        7,
        "11" * 32,
    )
    inflated = receipt.payload.replace('"completion_tokens":7', '"completion_tokens":700')
    with pytest.raises(AttestationError, match="does not verify"):
        verify_receipt(msgspec.structs.replace(receipt, payload=inflated), bundle)
    with pytest.raises(AttestationError, match="does not verify"):
        verify_receipt(receipt, verify_attestation(_attestor().bundle()))


def test_node_caps_sealed_max_tokens_at_the_plaintext_hint_and_checks_the_model() -> None:
    keys = NodeKeys.generate()
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000, "temperature": 0}
    ).encode()
    env, _ = seal_request(body, "m", {keys.node_id: bytes(keys.encryption_key.public_key)})
    req = InferenceRequest(request_id="r", model="m", params=SamplingParams(max_tokens=64), sealed=env)  # type: ignore[arg-type]
    messages, params, sealer = open_sealed(req, keys)
    assert messages[0].content == "hi" and params.max_tokens == 64 and params.temperature == 0 and sealer.sealed
    sealer.forget()
    assert not sealer.sealed
    other = json.dumps({"model": "other", "messages": [{"role": "user", "content": "hi"}]}).encode()
    env2, _ = seal_request(other, "m", {keys.node_id: bytes(keys.encryption_key.public_key)})
    with pytest.raises(SealedError, match="is for 'other'"):
        open_sealed(msgspec.structs.replace(req, sealed=env2), keys)


def test_key_files_are_private_and_stable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = NodeKeys.load_or_create(tmp_path)
    b = NodeKeys.load_or_create(tmp_path)
    assert a.node_id == b.node_id and a.encryption_public == b.encryption_public
    for name in ("signing_key", "encryption_key"):
        assert (tmp_path / "node" / name).stat().st_mode & 0o777 == 0o600
    assert isinstance(public.PrivateKey(bytes(a.encryption_key)), public.PrivateKey)
