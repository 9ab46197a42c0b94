"""What the relay does for privacy: seal outgoing requests, open or pass chunks, check receipts.

The fleet calls ``outgoing`` when it sends an ``inference_request`` to the
node routing chose, and ``incoming`` for each frame that node sends back.

- Sealed mode (the consumer sealed the request): the envelope is relayed as
  is and chunks pass through still encrypted; this coordinator never holds a
  key that opens them.
- Compatible mode (a plain request to an attested node): the coordinator
  seals the request to that node itself, so the hop to the node is
  end-to-end encrypted, and opens the chunks for the consumer.
- Every ``complete`` from an attested node must carry a receipt its attested
  key signed, naming this request, the sealed bytes relayed, the model and
  the same token counts; otherwise the request fails (and nothing is charged).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from darkbloom.protocol import Chunk, Complete, Error, Frame, InferenceRequest, SamplingParams
from darkbloom.protocol.sealed import (
    SEALED_CONTENT_TYPE,
    AttestationError,
    InternalBody,
    SealedError,
    VerifiableReceipt,
    b64d,
    b64e,
    decode_piece,
    decode_receipt,
    open_chunk,
    response_key,
    seal_request,
    sealed_request_hash,
    verify_receipt,
)

log = logging.getLogger(__name__)

PrivacyMode = Literal["sealed", "coordinator-visible"]


@dataclass
class FlightPrivacy:
    """A dispatched request's privacy state (lives on the fleet's ``InFlight``)."""

    mode: PrivacyMode
    sealed_hash: str = ""
    chunk_key: bytes | None = None

    def forget(self) -> None:
        self.chunk_key = None


class ReceiptBook:
    """Verified receipts by request id, in memory, newest ``capacity`` kept."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, VerifiableReceipt] = OrderedDict()

    def put(self, request_id: str, receipt: VerifiableReceipt) -> None:
        self._items[request_id] = receipt
        self._items.move_to_end(request_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, request_id: str) -> VerifiableReceipt | None:
        return self._items.get(request_id)


class PrivacyRelay:
    """The fleet's privacy hook."""

    def __init__(self, receipts: ReceiptBook) -> None:
        self.receipts = receipts

    def outgoing(self, node: Any, req: InferenceRequest) -> tuple[InferenceRequest, FlightPrivacy]:
        """The frame to send to ``node`` and the state to keep for its replies."""
        if req.sealed is not None:
            return req, FlightPrivacy("sealed", sealed_request_hash(req.sealed))
        trust = getattr(node, "attestation", None)
        if trust is None:
            return req, FlightPrivacy("coordinator-visible")
        body = msgspec.json.encode(InternalBody(1, req.model, req.messages, req.params))
        env, content_key = seal_request(
            body, req.model, {node.node_id: b64d(trust.bundle.encryption_key, "encryption_key")}
        )
        sealed = msgspec.structs.replace(
            req, messages=(), params=SamplingParams(max_tokens=req.params.max_tokens), sealed=env
        )
        return sealed, FlightPrivacy(
            "coordinator-visible", sealed_request_hash(env), response_key(content_key, node.node_id)
        )

    def incoming(self, node: Any, flight: Any, frame: Frame) -> Frame:
        """A node's frame as the consumer side should see it (or an error in its place)."""
        privacy: FlightPrivacy | None = getattr(flight, "privacy", None)
        if privacy is None:
            return frame
        if isinstance(frame, Chunk) and privacy.chunk_key is not None:
            if frame.sealed is None:
                return _fail(flight, "the provider sent a plaintext chunk for a sealed request")
            try:
                piece = decode_piece(open_chunk(privacy.chunk_key, frame.seq, frame.sealed))
                return Chunk(
                    request_id=frame.request_id,
                    seq=frame.seq,
                    text=piece.text,
                    tokens=frame.tokens,
                    tool_calls=piece.tool_calls,
                    logprobs=piece.logprobs,
                )
            except SealedError as exc:
                return _fail(flight, str(exc))
        if isinstance(frame, Chunk) and privacy.mode == "sealed" and (frame.text or frame.tool_calls or frame.logprobs):
            return _fail(flight, "the provider sent a plaintext chunk for a sealed request")
        if isinstance(frame, Complete):
            trust = getattr(node, "attestation", None) if node is not None else None
            if trust is None:
                return frame
            try:
                self._check_receipt(trust, flight, privacy, frame)
            except AttestationError as exc:
                log.warning("rejected receipt from %s for %s: %s", flight.node_id, flight.request_id, exc)
                return Error(
                    message=f"the provider's receipt was rejected: {exc}",
                    code="invalid_receipt",
                    status=502,
                    request_id=frame.request_id,
                )
        return frame

    def _check_receipt(self, trust: Any, flight: Any, privacy: FlightPrivacy, frame: Complete) -> None:
        if not frame.receipt:
            raise AttestationError("an attested provider must sign a receipt for every request")
        receipt = decode_receipt(frame.receipt)
        payload = verify_receipt(receipt, trust.bundle)
        expected = {
            "request_id": flight.request_id,
            "sealed_request_hash": privacy.sealed_hash,
            "model": flight.model,
            "prompt_tokens": frame.usage.prompt_tokens,
            "completion_tokens": frame.usage.completion_tokens,
        }
        for name, value in expected.items():
            if getattr(payload, name) != value:
                raise AttestationError(f"receipt {name} is {getattr(payload, name)!r}, expected {value!r}")
        self.receipts.put(flight.request_id, VerifiableReceipt(receipt=receipt, attestation=trust.signed))


def _fail(flight: Any, message: str) -> Error:
    log.warning("request %s from %s: %s", flight.request_id, flight.node_id, message)
    return Error(message=message, code="provider_error", status=502, request_id=flight.request_id)


def relay_headers(relay: Any, *, receipt: bool = False) -> dict[str, str]:
    """Privacy and provider headers for a dispatched request; with ``receipt``, ``X-Darkbloom-Receipt`` too.

    The receipt is known only once the request has finished, so only a whole
    (non-streamed) answer can carry it as a header.
    """
    headers = provider_headers(relay.fleet, relay.node_id, relay.privacy)
    book = getattr(relay.fleet.privacy, "receipts", None)
    found = book.get(relay.flight.request_id) if receipt and book is not None else None
    if found is not None:
        headers["X-Darkbloom-Receipt"] = b64e(msgspec.json.encode(found))
    return headers


def privacy_mode(request: Any) -> PrivacyMode:
    """The mode a consumer request asked for, from its content type (for responses that never reached a node)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return "sealed" if content_type == SEALED_CONTENT_TYPE else "coordinator-visible"


def provider_headers(fleet: Any, node_id: str, mode: PrivacyMode) -> dict[str, str]:
    """``X-Darkbloom-Privacy`` and the serving node's identity and trust headers."""
    node = fleet.registry.nodes.get(node_id)
    trust = getattr(node, "attestation", None)
    return {
        "X-Darkbloom-Privacy": mode,
        "X-Provider-Id": node_id,
        "X-Provider-Attested": "true" if trust is not None and getattr(node, "trust", "") == "trusted" else "false",
        "X-Provider-Trust-Level": trust.trust_level if trust is not None else "none",
        "X-Provider-Chip": (node.hardware.chip if node is not None else "").encode("ascii", "ignore").decode(),
    }
