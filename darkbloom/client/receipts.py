"""Check a node-signed receipt offline, against the node's own signed attestation.

A receipt says: this node (its id is derived from its signing key) ran this
request (by id and by the hash of the sealed bytes it was sent) on this model
(and weight hash), with these token counts, at this time. Verification needs
no network: the receipt travels with the node's signed bundle.
"""

from __future__ import annotations

import base64
import binascii
import json

import msgspec

from darkbloom.protocol.sealed import (
    AttestationError,
    ReceiptPayload,
    VerifiableReceipt,
    verify_attestation,
    verify_receipt,
)


def load_receipt(text: str) -> VerifiableReceipt:
    """A verifiable receipt from its JSON text, or from base64 of it (the ``X-Darkbloom-Receipt`` header).

    Raises:
        AttestationError: neither form parses.
    """
    text = text.strip()
    if not text.startswith("{"):
        try:
            text = base64.b64decode(text, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AttestationError("the receipt is neither JSON nor base64 JSON") from None
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "receipt" not in doc and "darkbloom_receipt" in doc:
            doc = doc["darkbloom_receipt"]
        return msgspec.convert(doc, VerifiableReceipt)
    except (json.JSONDecodeError, msgspec.ValidationError) as exc:
        raise AttestationError(f"the receipt is malformed: {exc}") from None


def verify_receipt_doc(
    doc: VerifiableReceipt,
    *,
    expect_signing_key: str | None = None,
    expect_sealed_hash: str | None = None,
    expect_request_id: str | None = None,
) -> ReceiptPayload:
    """Verify a receipt and the attestation it travels with.

    Args:
        doc: The receipt and the node's signed attestation.
        expect_signing_key: The node key the caller already trusts (e.g. the one
            it sealed to); without it the receipt only proves self-consistency.
        expect_sealed_hash: The hash of the sealed request the caller sent.
        expect_request_id: The request id the caller was given.

    Returns:
        The verified receipt fields.

    Raises:
        AttestationError: any check fails; the message says which.
    """
    bundle = verify_attestation(doc.attestation)
    if expect_signing_key is not None and bundle.signing_key != expect_signing_key:
        raise AttestationError("the receipt's attestation is for a different node key than expected")
    payload = verify_receipt(doc.receipt, bundle)
    if expect_sealed_hash is not None and payload.sealed_request_hash != expect_sealed_hash:
        raise AttestationError("the receipt names a different sealed request than the one sent")
    if expect_request_id is not None and payload.request_id != expect_request_id:
        raise AttestationError(f"the receipt is for request {payload.request_id!r}, not {expect_request_id!r}")
    weight = bundle.weight_hash(payload.model)
    if payload.weight_hash and weight and payload.weight_hash != weight:
        raise AttestationError("the receipt's weight hash differs from the one the node attested for the model")
    return payload
