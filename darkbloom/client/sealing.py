"""Sealed mode on the consumer's machine: verify node keys, seal a request, open the answer.

The coordinator never sees the plaintext: the client fetches attested X25519
keys for the model (``GET /v1/providers/keys``), checks each node's signed
bundle itself, encrypts the OpenAI chat body once under a fresh content key
and seals that key to k of those nodes. Only the model, ``max_tokens`` and a
prompt-token estimate travel in the clear. Chunks come back encrypted under
a key only the client and the serving node can derive; the final event
carries the node's signed receipt, which the client checks against the
bundle it sealed to.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from darkbloom.client.receipts import verify_receipt_doc
from darkbloom.protocol import SignedAttestation, ToolCall
from darkbloom.protocol.sealed import (
    SEALED_CONTENT_TYPE,
    AttestationBundle,
    AttestationError,
    ReceiptPayload,
    SealedError,
    VerifiableReceipt,
    b64d,
    decode_piece,
    open_chunk,
    response_key,
    seal_request,
    sealed_request_hash,
    verify_attestation,
)

DEFAULT_RECIPIENTS = 3
KEYS_TTL_S = 30.0
_PRIVATE_FIELDS = ("user", "metadata", "stream", "stream_options")


class SealedRequestError(Exception):
    """The coordinator refused a sealed request or the stream ended in an error.

    ``status`` and ``body`` are the coordinator's OpenAI-shaped error.
    """

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        super().__init__(body.get("error", {}).get("message", f"HTTP {status}"))


@dataclass(frozen=True)
class ProviderKey:
    """A node key the client verified itself from its signed bundle."""

    node_id: str
    encryption_key: bytes
    bundle: AttestationBundle
    signed: SignedAttestation
    trust_level: str


def verify_provider_keys(listing: dict[str, Any], model: str) -> list[ProviderKey]:
    """The entries of a ``/v1/providers/keys`` answer whose bundles verify and attest ``model``.

    An entry whose bundle does not verify, names another node or key, or
    does not list the model is dropped: the coordinator cannot slip in a key
    of its own.
    """
    keys: list[ProviderKey] = []
    for entry in listing.get("data", []):
        try:
            signed = msgspec.convert(entry["attestation"], SignedAttestation)
            bundle = verify_attestation(signed)
            if bundle.node_id != entry["node_id"] or bundle.encryption_key != entry["encryption_key"]:
                raise AttestationError("listing disagrees with the signed bundle")
            if model not in {m.id for m in bundle.models}:
                raise AttestationError(f"bundle does not attest {model}")
        except (AttestationError, KeyError, TypeError, msgspec.ValidationError):
            continue
        keys.append(
            ProviderKey(
                bundle.node_id, b64d(bundle.encryption_key, "encryption_key"), bundle, signed, bundle.trust_level
            )
        )
    return keys


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A coarse prompt-size hint for routing (about 4 characters a token)."""
    return max(1, len(json.dumps(body.get("messages", []))) // 4)


@dataclass
class SealedCall:
    """One sealed request: what to send, and what opens its answer (forget it after)."""

    request: dict[str, Any]
    recipients: dict[str, ProviderKey]
    sealed_hash: str
    content_key: bytes = field(repr=False)

    def chunk_key(self, node_id: str) -> bytes:
        if node_id not in self.recipients:
            raise SealedError(f"the answer came from {node_id!r}, which this request was not sealed to")
        return response_key(self.content_key, node_id)

    def forget(self) -> None:
        self.content_key = b""


def seal_chat(
    body: dict[str, Any], keys: list[ProviderKey], k: int = DEFAULT_RECIPIENTS, rng: random.Random | None = None
) -> SealedCall:
    """Seal an OpenAI chat completion body to ``k`` of ``keys``.

    Raises:
        SealedError: no keys to seal to.
    """
    if not keys:
        raise SealedError(f"no attested provider serves {body.get('model')!r} right now")
    chosen = (rng or random.SystemRandom()).sample(keys, min(k, len(keys)))
    clean = {name: value for name, value in body.items() if name not in _PRIVATE_FIELDS}
    model = str(body["model"])
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 256)
    envelope, content_key = seal_request(
        json.dumps(clean).encode(), model, {p.node_id: p.encryption_key for p in chosen}
    )
    request = {
        "model": model,
        "max_tokens": max_tokens,
        "prompt_tokens_estimate": estimate_prompt_tokens(body),
        "envelope": msgspec.to_builtins(envelope),
    }
    return SealedCall(request, {p.node_id: p for p in chosen}, sealed_request_hash(envelope), content_key)


@dataclass(frozen=True)
class SealedText:
    """A decrypted piece of the answer: text, and any tool calls the model completed in it."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class SealedDone:
    """The end of a sealed answer: usage and the verified receipt."""

    request_id: str
    node_id: str
    finish_reason: str
    usage: dict[str, int]
    receipt: VerifiableReceipt | None
    receipt_payload: ReceiptPayload | None


@dataclass(frozen=True)
class SealedStart:
    """The coordinator accepted the request: its id and the serving node's headers."""

    request_id: str
    headers: dict[str, str]


SealedEvent = SealedStart | SealedText | SealedDone


class SealedClient:
    """Sends sealed chat requests to a coordinator.

    Args:
        base_url: Coordinator base URL (``http://host:port``).
        api_key: Consumer API key.
        k: How many nodes to seal each request to (the coordinator may fail over among them).
    """

    def __init__(
        self, base_url: str, api_key: str, *, k: int = DEFAULT_RECIPIENTS, http: httpx.AsyncClient | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.k = k
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=10.0))
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self._keys: dict[str, tuple[float, list[ProviderKey]]] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    async def provider_keys(self, model: str, *, fresh: bool = False) -> list[ProviderKey]:
        """Verified keys for ``model``, cached for a short while."""
        cached = self._keys.get(model)
        if cached and not fresh and time.monotonic() - cached[0] < KEYS_TTL_S:
            return cached[1]
        resp = await self.http.get(f"{self.base_url}/v1/providers/keys", params={"model": model}, headers=self.headers)
        if resp.status_code != 200:
            raise SealedRequestError(resp.status_code, _json(resp))
        keys = verify_provider_keys(resp.json(), model)
        self._keys[model] = (time.monotonic(), keys)
        return keys

    async def chat(self, body: dict[str, Any]) -> AsyncIterator[SealedEvent]:
        """Seal ``body`` and yield its answer: a start, the decrypted text pieces, then the end.

        Raises:
            SealedRequestError: refused by the coordinator, or an error event in the stream.
            SealedError: a chunk did not authenticate, or the receipt did not verify.
        """
        keys = await self.provider_keys(str(body.get("model", "")))
        if not keys:
            keys = await self.provider_keys(str(body.get("model", "")), fresh=True)
        call = seal_chat(body, keys, self.k)
        try:
            async with self.http.stream(
                "POST",
                f"{self.base_url}/v1/chat/completions",
                content=json.dumps(call.request).encode(),
                headers={**self.headers, "Content-Type": SEALED_CONTENT_TYPE},
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    if resp.status_code == 503:
                        self._keys.pop(str(body.get("model")), None)
                    raise SealedRequestError(resp.status_code, _json(resp))
                node_id = resp.headers.get("x-provider-id", "")
                key = call.chunk_key(node_id)
                yield SealedStart(resp.headers.get("x-request-id", ""), dict(resp.headers))
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    kind = event.get("type")
                    if kind == "chunk":
                        piece = decode_piece(open_chunk(key, int(event["seq"]), event["sealed"]))
                        yield SealedText(piece.text, piece.tool_calls)
                    elif kind == "complete":
                        yield _done(event, call, node_id)
                        return
                    elif kind == "error":
                        raise SealedRequestError(
                            int(event.get("error", {}).get("status", 502) or 502), {"error": event.get("error", {})}
                        )
                raise SealedRequestError(
                    502,
                    {
                        "error": {
                            "message": "the sealed stream ended without a complete event",
                            "type": "server_error",
                            "code": "provider_error",
                        }
                    },
                )
        finally:
            call.forget()


def _done(event: dict[str, Any], call: SealedCall, node_id: str) -> SealedDone:
    doc = event.get("receipt")
    receipt = payload = None
    if doc is not None:
        receipt = msgspec.convert(doc, VerifiableReceipt)
        payload = verify_receipt_doc(
            receipt,
            expect_signing_key=call.recipients[node_id].bundle.signing_key,
            expect_sealed_hash=call.sealed_hash,
        )
    return SealedDone(
        event.get("id", ""), node_id, event.get("finish_reason", "stop"), event.get("usage", {}), receipt, payload
    )


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
        return body if isinstance(body, dict) else {"error": {"message": str(body)}}
    except ValueError:
        return {"error": {"message": resp.text or f"HTTP {resp.status_code}", "type": "server_error", "code": None}}
