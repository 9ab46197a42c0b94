"""The node's side of privacy: attestation bundle, challenge answers, sealed requests, receipts.

``NodeAttestor`` holds the node's keys and what it swears to at registration;
``open_sealed`` turns a sealed ``inference_request`` into messages for the
engine plus a ``ResponseSealer`` that encrypts each chunk and signs the
receipt. The per-request keys live only in that sealer and are dropped when
the request ends.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

import darkbloom
from darkbloom.node.identity import NodeKeys
from darkbloom.protocol import (
    AttestationChallenge,
    AttestationResponse,
    ChatMessage,
    Complete,
    Hardware,
    InferenceRequest,
    SamplingParams,
    SignedAttestation,
    TokenLogprob,
    ToolCall,
    Usage,
)
from darkbloom.protocol.openai import RequestError, parse_chat_request, to_internal
from darkbloom.protocol.sealed import (
    AttestationBundle,
    ChallengeState,
    InternalBody,
    ModelAttestation,
    ReceiptPayload,
    SealedError,
    encode_piece,
    open_request,
    response_key,
    seal_chunk,
    sealed_request_hash,
    sign_attestation,
    sign_challenge,
    sign_receipt,
)

log = logging.getLogger(__name__)


class HardwareAttester(Protocol):
    """Hardware-backed evidence for the bundle (a macOS build can fill this in).

    A Secure Enclave implementation would return an Apple App Attest / device
    attestation object binding the node's Ed25519 public key to a key that
    lives in the Secure Enclave, plus the boot policy (SIP on, secure boot
    full) and the code-signing identity of the running binary. The
    coordinator's matching verifier checks that chain to Apple's root.
    """

    def evidence(self, signing_public: str, encryption_public: str) -> str | None: ...


def package_hash(root: Path | None = None) -> str:
    """SHA-256 over the installed darkbloom package's Python files (path and bytes, sorted)."""
    root = root or Path(darkbloom.__file__).parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


@dataclass
class NodeAttestor:
    """Signs for this node: the registration bundle, challenge answers and receipts."""

    keys: NodeKeys
    hardware: Hardware
    weight_hashes: dict[str, str] = field(default_factory=dict)
    version: str = darkbloom.__version__
    code_hash: str = field(default_factory=package_hash)
    hardware_attester: HardwareAttester | None = None

    @property
    def node_id(self) -> str:
        return self.keys.node_id

    def bundle(self, now: float | None = None) -> SignedAttestation:
        """A freshly dated, signed attestation bundle for ``register``."""
        evidence = None
        if self.hardware_attester is not None:
            evidence = self.hardware_attester.evidence(self.keys.signing_public, self.keys.encryption_public)
        bundle = AttestationBundle(
            node_id=self.node_id,
            signing_key=self.keys.signing_public,
            encryption_key=self.keys.encryption_public,
            version=self.version,
            package_hash=self.code_hash,
            models=tuple(ModelAttestation(id=m, weight_hash=h) for m, h in sorted(self.weight_hashes.items())),
            hardware=self.hardware,
            timestamp=time.time() if now is None else now,
            trust_level="hardware" if evidence else "software",
            hardware_evidence=evidence,
        )
        return sign_attestation(bundle, self.keys.signing_key)

    def answer(
        self, challenge: AttestationChallenge, models: Iterable[str], active_requests: int
    ) -> AttestationResponse:
        """Sign the challenge nonce together with this node's current state."""
        state = ChallengeState(
            node_id=self.node_id,
            encryption_key=self.keys.encryption_public,
            models=tuple(sorted(models)),
            active_requests=active_requests,
            timestamp=time.time(),
        )
        text, sig = sign_challenge(challenge.nonce, state, self.keys.signing_key)
        return AttestationResponse(nonce=challenge.nonce, signature=sig, state=text)

    def receipt(self, request_id: str, model: str, sealed_hash: str, usage: Usage, finish_reason: str) -> str:
        """The signed receipt for a finished request, as ``complete.receipt`` carries it (JSON)."""
        payload = ReceiptPayload(
            request_id=request_id,
            sealed_request_hash=sealed_hash,
            model=model,
            weight_hash=self.weight_hashes.get(model, ""),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            node_id=self.node_id,
            timestamp=time.time(),
            finish_reason=finish_reason,
        )
        return msgspec.json.encode(sign_receipt(payload, self.keys.signing_key)).decode()


class ResponseSealer:
    """One sealed request's response side: encrypts chunks, then forgets its key.

    ``key`` is ``None`` for a coordinator-visible request (chunks go in the clear).
    """

    def __init__(self, key: bytes | None, sealed_hash: str, *, private: bool = False) -> None:
        self._key = bytearray(key) if key is not None else None
        self.sealed_hash = sealed_hash
        self.private = private  # the consumer sealed it: nothing from the body may leave in the clear

    @property
    def sealed(self) -> bool:
        return self._key is not None

    def chunk_fields(
        self, seq: int, text: str, tool_calls: tuple[ToolCall, ...] = (), logprobs: tuple[TokenLogprob, ...] = ()
    ) -> dict[str, Any]:
        """``text``/``tool_calls``/``logprobs``/``sealed`` fields for the chunk frame carrying this piece.

        Sealed, the piece travels as ``{"text": ..., "tool_calls": [...], "logprobs": [...]}``
        encrypted under the response key; nothing of it is left in the clear (the log
        probabilities' tokens would spell the text out).
        """
        if self._key is None:
            return {"text": text, "tool_calls": tool_calls, "logprobs": logprobs}
        return {"text": "", "sealed": seal_chunk(bytes(self._key), seq, encode_piece(text, tool_calls, logprobs))}

    def forget(self) -> None:
        """Overwrite and drop the per-request key (called when the request ends)."""
        if self._key is not None:
            for i in range(len(self._key)):
                self._key[i] = 0
            self._key = None


def _parse_plaintext(plaintext: bytes) -> tuple[str, tuple[ChatMessage, ...], SamplingParams, bool]:
    if plaintext.lstrip().startswith(b'{"darkbloom_internal"'):
        try:
            internal = msgspec.json.decode(plaintext, type=InternalBody)
        except msgspec.DecodeError as exc:
            raise SealedError(f"the sealed request body is invalid: {exc}") from None
        return internal.model, internal.messages, internal.params, False
    try:
        body = parse_chat_request(plaintext)
        messages, params = to_internal(body)
    except RequestError as exc:
        raise SealedError(f"the sealed request body is invalid: {exc.message}") from None
    return body.model, messages, params, True


def open_sealed(
    req: InferenceRequest, keys: NodeKeys
) -> tuple[tuple[ChatMessage, ...], SamplingParams, ResponseSealer]:
    """The messages, sampling and response sealer for one request.

    For a sealed request the plaintext is an OpenAI chat completion body. The
    plaintext ``max_tokens`` hint (what the consumer was held for) caps the
    sealed one, and the sealed ``model`` must equal the routing hint.

    Raises:
        SealedError: the envelope does not open for this node, or its body is
            not a valid chat request for this model.
    """
    if req.sealed is None:
        return req.messages, req.params, ResponseSealer(None, "")
    plaintext, content_key = open_request(req.sealed, req.model, keys.node_id, keys.encryption_key)
    try:
        model, messages, params, private = _parse_plaintext(plaintext)
    finally:
        del plaintext
    if model != req.model:
        raise SealedError(f"the sealed request is for {model!r} but was routed as {req.model!r}")
    hint = req.params.max_tokens
    if params.max_tokens > hint:
        params = msgspec.structs.replace(params, max_tokens=hint)
    resp_key = response_key(content_key, keys.node_id)
    return messages, params, ResponseSealer(resp_key, sealed_request_hash(req.sealed), private=private)


def complete_frame(
    attestor: NodeAttestor | None,
    req: InferenceRequest,
    sealer: ResponseSealer,
    usage: Usage,
    finish_reason: str,
    stop_sequence: str | None = None,
) -> Complete:
    """The terminal ``complete`` frame, with a signed receipt when the node has keys.

    A consumer-sealed request's matched stop string came from the sealed body,
    so it is left out rather than sent in the clear; so is how much of its
    prompt the node found in its prompt cache, which would tell the
    coordinator that two sealed prompts share a beginning.
    """
    if sealer.private and usage.cached_tokens:
        usage = msgspec.structs.replace(usage, cached_tokens=0)
    receipt = None
    if attestor is not None:
        receipt = attestor.receipt(req.request_id, req.model, sealer.sealed_hash, usage, finish_reason)
    return Complete(
        request_id=req.request_id,  # type: ignore[arg-type]
        usage=usage,
        finish_reason=finish_reason,  # type: ignore[arg-type]
        receipt=receipt,
        stop_sequence=None if sealer.private else stop_sequence,
    )
