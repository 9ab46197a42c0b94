"""Sealed envelopes, attestation bundles and receipts: the privacy wire formats.

Pure functions over bytes (PyNaCl / libsodium); no IO. The client, the node
and the coordinator all import this one module, so the three agree on every
byte. The format is documented for other implementations in
docs/sealed-envelope.md.

- A request body is encrypted once with XChaCha20-Poly1305 under a fresh
  32-byte content key; the content key is sealed (X25519 + XSalsa20-Poly1305,
  libsodium ``crypto_box_seal``) to each of k candidate nodes.
- Response chunks are encrypted under a key derived from the content key and
  the serving node's id, with a random nonce and the chunk's ``seq`` bound in
  the associated data, so a reordered or replayed chunk fails to open.
- Attestation bundles, challenge answers and receipts are Ed25519 signatures
  over domain-separated messages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Literal

import msgspec
from nacl import bindings, exceptions, public, signing, utils
from nacl.encoding import RawEncoder
from nacl.hash import blake2b

from darkbloom.protocol.frames import (
    ChatMessage,
    Hardware,
    SamplingParams,
    SealedEnvelope,
    SignedAttestation,
    TokenLogprob,
    ToolCall,
)

ENVELOPE_VERSION = 1
ALGORITHM = "x25519-xsalsa20poly1305+xchacha20poly1305"
KEY_BYTES = 32
NONCE_BYTES = 24
MAX_RECIPIENTS = 16
SEALED_CONTENT_TYPE = "application/darkbloom-sealed+json"
"""``Content-Type`` of a sealed ``POST /v1/chat/completions`` body."""

_ATTESTATION_CONTEXT = b"darkbloom-attestation-v1\n"
_CHALLENGE_CONTEXT = b"darkbloom-challenge-v1\n"
_RECEIPT_CONTEXT = b"darkbloom-receipt-v1\n"
_REQUEST_AAD = b"darkbloom-request-v1\n"
_CHUNK_AAD = b"darkbloom-chunk-v1\n"
_RESPONSE_PERSON = b"darkbloom-resp01"  # blake2b personalization: exactly 16 bytes

TrustLevel = Literal["none", "software", "hardware"]


class SealedError(ValueError):
    """An envelope or chunk that does not open: tampered, wrong recipient or malformed."""


class AttestationError(ValueError):
    """An attestation bundle, challenge answer or receipt that does not verify."""


def b64e(data: bytes) -> str:
    """Standard base64 with padding, as every binary field of these formats uses."""
    return base64.b64encode(data).decode("ascii")


def b64d(value: str, what: str, error: type[ValueError] = SealedError) -> bytes:
    """Strict base64 decode; raises ``error`` naming the field on bad input."""
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeError, AttributeError):
        raise error(f"{what} is not valid base64") from None


# ---- identity ----------------------------------------------------------------------


def node_id_for(signing_key: bytes) -> str:
    """The node id an Ed25519 public key names: ``node-`` + 16 hex of its SHA-256.

    Self-certifying: no one can claim a node id without its signing key.
    """
    return "node-" + hashlib.sha256(signing_key).hexdigest()[:16]


class ModelAttestation(msgspec.Struct, frozen=True):
    """A model a node serves and the SHA-256 over its weight files."""

    id: str
    weight_hash: str = ""


class AttestationBundle(msgspec.Struct, frozen=True):
    """What a node swears to when it registers (the signed payload)."""

    node_id: str
    signing_key: str
    encryption_key: str
    version: str
    package_hash: str
    models: tuple[ModelAttestation, ...]
    hardware: Hardware
    timestamp: float
    trust_level: TrustLevel = "software"
    hardware_evidence: str | None = None

    def weight_hash(self, model: str) -> str:
        for m in self.models:
            if m.id == model:
                return m.weight_hash
        return ""


def sign_attestation(bundle: AttestationBundle, key: signing.SigningKey) -> SignedAttestation:
    payload = msgspec.json.encode(bundle).decode()
    sig = key.sign(_ATTESTATION_CONTEXT + payload.encode()).signature
    return SignedAttestation(payload=payload, signature=b64e(sig))


def _verify(key: bytes, context: bytes, message: bytes, signature: str, what: str) -> None:
    sig = b64d(signature, f"{what} signature", AttestationError)
    try:
        signing.VerifyKey(key).verify(context + message, sig)
    except (exceptions.BadSignatureError, ValueError, TypeError):
        raise AttestationError(f"{what} signature does not verify") from None


def verify_attestation(
    signed: SignedAttestation, *, now: float | None = None, max_age_s: float | None = None, max_skew_s: float = 60.0
) -> AttestationBundle:
    """Check a signed bundle and return it.

    Args:
        signed: The bundle as the node sent it.
        now: Wall-clock time for the freshness check (skipped when ``None``).
        max_age_s: Oldest acceptable bundle, in seconds.
        max_skew_s: How far in the future a timestamp may be (clock skew).

    Raises:
        AttestationError: malformed, bad signature, node id not derived from
            the signing key, wrong key sizes, or expired.
    """
    try:
        bundle = msgspec.json.decode(signed.payload, type=AttestationBundle)
    except msgspec.DecodeError as exc:
        raise AttestationError(f"attestation bundle is malformed: {exc}") from None
    vk = b64d(bundle.signing_key, "signing_key", AttestationError)
    if len(vk) != 32 or len(b64d(bundle.encryption_key, "encryption_key", AttestationError)) != 32:
        raise AttestationError("attestation keys must be 32 bytes")
    _verify(vk, _ATTESTATION_CONTEXT, signed.payload.encode(), signed.signature, "attestation bundle")
    if bundle.node_id != node_id_for(vk):
        raise AttestationError(f"node id {bundle.node_id!r} is not the one its signing key names ({node_id_for(vk)})")
    if now is not None:
        age = now - bundle.timestamp
        if max_age_s is not None and age > max_age_s:
            raise AttestationError(
                f"attestation bundle expired: signed {age:.0f} s ago, the limit is {max_age_s:.0f} s"
            )
        if age < -max_skew_s:
            raise AttestationError(f"attestation bundle is dated {-age:.0f} s in the future; check the node's clock")
    return bundle


# ---- challenges --------------------------------------------------------------------


class ChallengeState(msgspec.Struct, frozen=True):
    """What a node signs with each challenge nonce: who it is and what it serves now."""

    node_id: str
    encryption_key: str
    models: tuple[str, ...]
    active_requests: int
    timestamp: float


def challenge_message(nonce: str, state: str) -> bytes:
    return _CHALLENGE_CONTEXT + nonce.encode() + b"\n" + state.encode()


def sign_challenge(nonce: str, state: ChallengeState, key: signing.SigningKey) -> tuple[str, str]:
    """Answer a challenge: returns ``(state_json, signature_b64)``."""
    text = msgspec.json.encode(state).decode()
    return text, b64e(key.sign(challenge_message(nonce, text)).signature)


def verify_challenge(nonce: str, state: str, signature: str, bundle: AttestationBundle) -> ChallengeState:
    """Check an answer against the attested bundle.

    Raises:
        AttestationError: bad signature, or the state names another node or key.
    """
    _verify(
        b64d(bundle.signing_key, "signing_key", AttestationError),
        _CHALLENGE_CONTEXT,
        nonce.encode() + b"\n" + state.encode(),
        signature,
        "challenge answer",
    )
    try:
        parsed = msgspec.json.decode(state, type=ChallengeState)
    except msgspec.DecodeError as exc:
        raise AttestationError(f"challenge state is malformed: {exc}") from None
    if parsed.node_id != bundle.node_id or parsed.encryption_key != bundle.encryption_key:
        raise AttestationError("challenge state names a different node or encryption key than the attested bundle")
    return parsed


# ---- envelopes ---------------------------------------------------------------------


def request_aad(model: str) -> bytes:
    """Associated data of a sealed request: the plaintext model hint is bound to the ciphertext."""
    return _REQUEST_AAD + model.encode()


def seal_request(plaintext: bytes, model: str, recipients: dict[str, bytes]) -> tuple[SealedEnvelope, bytes]:
    """Encrypt a request body once and seal its content key to each recipient.

    Args:
        plaintext: The request body (an OpenAI chat completion request as JSON).
        model: The plaintext model routing hint; a node opens only under the same model.
        recipients: Node id -> that node's X25519 public key (32 bytes).

    Returns:
        The envelope and the content key (keep it to open the response; forget it after).
    """
    if not recipients:
        raise SealedError("a sealed envelope needs at least one recipient")
    if len(recipients) > MAX_RECIPIENTS:
        raise SealedError(f"at most {MAX_RECIPIENTS} recipients per envelope")
    key = utils.random(KEY_BYTES)
    nonce = utils.random(NONCE_BYTES)
    ct = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, request_aad(model), nonce, key)
    sealed = {nid: b64e(public.SealedBox(public.PublicKey(pk)).encrypt(key)) for nid, pk in recipients.items()}
    return SealedEnvelope(
        version=ENVELOPE_VERSION, ciphertext=b64e(ct), nonce=b64e(nonce), recipients=sealed, algorithm=ALGORITHM
    ), key


def check_envelope(env: SealedEnvelope) -> None:
    """Structural checks anyone (the coordinator included) can make without a key.

    Raises:
        SealedError: unknown version or algorithm, bad sizes, no or too many recipients.
    """
    if env.version != ENVELOPE_VERSION:
        raise SealedError(f"sealed envelope version {env.version} is not supported (expected {ENVELOPE_VERSION})")
    if env.algorithm != ALGORITHM:
        raise SealedError(f"sealed envelope algorithm {env.algorithm!r} is not supported (expected {ALGORITHM!r})")
    if len(b64d(env.nonce, "nonce")) != NONCE_BYTES:
        raise SealedError(f"nonce must be {NONCE_BYTES} bytes")
    if len(b64d(env.ciphertext, "ciphertext")) < bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES:
        raise SealedError("ciphertext is too short to hold an authentication tag")
    if not env.recipients or len(env.recipients) > MAX_RECIPIENTS:
        raise SealedError(f"a sealed envelope needs 1 to {MAX_RECIPIENTS} recipients")
    for nid, sealed_key in env.recipients.items():
        if len(b64d(sealed_key, f"recipients[{nid}]")) != KEY_BYTES + bindings.crypto_box_SEALBYTES:
            raise SealedError(f"recipients[{nid}] is not a sealed {KEY_BYTES}-byte key")


def open_request(env: SealedEnvelope, model: str, node_id: str, private_key: public.PrivateKey) -> tuple[bytes, bytes]:
    """Open an envelope as one of its recipients.

    Returns:
        ``(plaintext, content_key)``.

    Raises:
        SealedError: not addressed to ``node_id``, sealed to another key, or
            the ciphertext (or its model hint) was altered.
    """
    check_envelope(env)
    sealed_key = env.recipients.get(node_id)
    if sealed_key is None:
        raise SealedError(f"the sealed envelope is not addressed to this node ({node_id})")
    try:
        key = public.SealedBox(private_key).decrypt(b64d(sealed_key, "recipient key"))
    except exceptions.CryptoError:
        raise SealedError(
            "the content key sealed to this node does not open with its key: wrong recipient key"
        ) from None
    try:
        plaintext = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            b64d(env.ciphertext, "ciphertext"), request_aad(model), b64d(env.nonce, "nonce"), key
        )
    except exceptions.CryptoError:
        raise SealedError(
            "the sealed request failed authentication: the ciphertext or its model hint was altered"
        ) from None
    return plaintext, key


class InternalBody(msgspec.Struct, frozen=True):
    """The plaintext a coordinator seals in compatible mode: the request in the node's own terms.

    A consumer's sealed plaintext is an OpenAI chat completion body instead;
    a node tells them apart by the ``darkbloom_internal`` key.
    """

    darkbloom_internal: int
    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams


def sealed_plaintext_bytes(env: SealedEnvelope) -> int:
    """The exact size of the sealed body, from the ciphertext length alone (AEAD adds 16 bytes).

    The coordinator can bound a sealed prompt's tokens by it (byte-level BPE
    never makes more tokens than bytes) without the client's estimate.
    """
    size = len(env.ciphertext) * 3 // 4 - env.ciphertext[-2:].count("=")
    return max(0, size - bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES)


def sealed_request_hash(env: SealedEnvelope) -> str:
    """SHA-256 (hex) over the envelope's nonce and ciphertext: what a receipt names."""
    return hashlib.sha256(b64d(env.nonce, "nonce") + b64d(env.ciphertext, "ciphertext")).hexdigest()


def response_key(content_key: bytes, node_id: str) -> bytes:
    """The key a node encrypts response chunks under: BLAKE2b keyed by the content key.

    The node id is mixed in so two recipients serving the same envelope
    (failover, hedging) never share a key.
    """
    return blake2b(
        node_id.encode(), digest_size=KEY_BYTES, key=content_key, person=_RESPONSE_PERSON, encoder=RawEncoder
    )


def _chunk_aad(seq: int) -> bytes:
    return _CHUNK_AAD + seq.to_bytes(8, "big")


class SealedPiece(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one sealed chunk holds: generated text, any tool calls completed in it, and (when
    asked for) its tokens' log probabilities, which would spell the text out in the clear."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


def encode_piece(text: str, tool_calls: tuple[ToolCall, ...] = (), logprobs: tuple[TokenLogprob, ...] = ()) -> str:
    """The plaintext of a sealed chunk: ``{"text": ..., "tool_calls": [...], "logprobs": [...]}`` as JSON."""
    return msgspec.json.encode(SealedPiece(text, tool_calls, logprobs)).decode()


def decode_piece(plaintext: str) -> SealedPiece:
    """Parse an opened chunk.

    Raises:
        SealedError: it is not a piece.
    """
    try:
        return msgspec.json.decode(plaintext, type=SealedPiece)
    except msgspec.DecodeError:
        raise SealedError("an opened response chunk is not a valid piece") from None


def seal_chunk(key: bytes, seq: int, text: str) -> str:
    """Encrypt one response piece: base64 of ``nonce(24) || ciphertext``."""
    nonce = utils.random(NONCE_BYTES)
    return b64e(nonce + bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(text.encode(), _chunk_aad(seq), nonce, key))


def open_chunk(key: bytes, seq: int, sealed: str) -> str:
    """Decrypt one response piece.

    Raises:
        SealedError: altered, reordered (wrong ``seq``) or under another key.
    """
    raw = b64d(sealed, "sealed chunk")
    if len(raw) < NONCE_BYTES + bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES:
        raise SealedError("sealed chunk is too short")
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            raw[NONCE_BYTES:], _chunk_aad(seq), raw[:NONCE_BYTES], key
        ).decode()
    except (exceptions.CryptoError, UnicodeDecodeError):
        raise SealedError(f"response chunk {seq} failed authentication") from None


# ---- receipts ----------------------------------------------------------------------


class ReceiptPayload(msgspec.Struct, frozen=True):
    """What a node signs when a request ends."""

    request_id: str
    sealed_request_hash: str
    model: str
    weight_hash: str
    prompt_tokens: int
    completion_tokens: int
    node_id: str
    timestamp: float
    finish_reason: str = "stop"


class Receipt(msgspec.Struct, frozen=True):
    """A signed receipt: ``payload`` is the ReceiptPayload JSON, ``signature`` Ed25519 (base64)."""

    payload: str
    signature: str


class VerifiableReceipt(msgspec.Struct, frozen=True):
    """A receipt with the node's signed attestation: all ``darkbloom verify`` needs, offline."""

    receipt: Receipt
    attestation: SignedAttestation


def sign_receipt(payload: ReceiptPayload, key: signing.SigningKey) -> Receipt:
    text = msgspec.json.encode(payload).decode()
    return Receipt(payload=text, signature=b64e(key.sign(_RECEIPT_CONTEXT + text.encode()).signature))


def verify_receipt(receipt: Receipt, bundle: AttestationBundle) -> ReceiptPayload:
    """Check a receipt against an attested bundle (already verified).

    Raises:
        AttestationError: bad signature, or it names another node.
    """
    _verify(
        b64d(bundle.signing_key, "signing_key", AttestationError),
        _RECEIPT_CONTEXT,
        receipt.payload.encode(),
        receipt.signature,
        "receipt",
    )
    try:
        payload = msgspec.json.decode(receipt.payload, type=ReceiptPayload)
    except msgspec.DecodeError as exc:
        raise AttestationError(f"receipt payload is malformed: {exc}") from None
    if payload.node_id != bundle.node_id:
        raise AttestationError(f"receipt names node {payload.node_id!r} but is signed by {bundle.node_id!r}")
    return payload


def decode_receipt(text: str) -> Receipt:
    """A receipt from its JSON text (as ``complete.receipt`` carries it)."""
    try:
        return msgspec.json.decode(text, type=Receipt)
    except msgspec.DecodeError as exc:
        raise AttestationError(f"receipt is malformed: {exc}") from None


__all__ = [
    "ALGORITHM",
    "ENVELOPE_VERSION",
    "SEALED_CONTENT_TYPE",
    "AttestationBundle",
    "AttestationError",
    "ChallengeState",
    "InternalBody",
    "ModelAttestation",
    "Receipt",
    "ReceiptPayload",
    "SealedError",
    "SignedAttestation",
    "VerifiableReceipt",
    "b64d",
    "b64e",
    "check_envelope",
    "node_id_for",
    "open_chunk",
    "open_request",
    "response_key",
    "seal_chunk",
    "seal_request",
    "sealed_plaintext_bytes",
    "sealed_request_hash",
    "sign_attestation",
    "sign_challenge",
    "sign_receipt",
    "verify_attestation",
    "verify_challenge",
    "verify_receipt",
]
