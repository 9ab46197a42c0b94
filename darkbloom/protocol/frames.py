"""Node <-> coordinator frames: one tagged union, one ``encode``, one ``decode``.

Every frame is a frozen msgspec struct whose JSON form carries a top-level
``type`` tag and snake_case keys, as the original Darkbloom's wire does. The
union decodes in one pass, which is what the streaming hot path needs.

Sans-IO: nothing here touches a socket or an event loop.
"""

from __future__ import annotations

from typing import Annotated, Literal, NewType, Union

import msgspec

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to a frame below."""

MAX_FRAME_BYTES = 10 * 1024 * 1024
"""Read limit for one WebSocket frame (the seed's 10 MB)."""

MAX_BATCH_BYTES = 1024 * 1024
"""A sender joins frames into one message up to this size (a single larger frame still goes alone)."""

NodeId = NewType("NodeId", str)
RequestId = NewType("RequestId", str)
ModelId = NewType("ModelId", str)


class ProtocolError(ValueError):
    """The one error ``decode`` raises: the bytes are not a valid frame.

    Raised for invalid JSON, a missing or unknown ``type`` tag, a missing
    required field, a field of the wrong type, or a frame over
    ``MAX_FRAME_BYTES``. The message says which, so it can be sent back to
    the peer in an ``error`` frame.
    """


Count = Annotated[int, msgspec.Meta(ge=0)]
"""A count a node reports (tokens, requests, bytes): never negative, so a buggy or hostile node's
negative figure is a malformed frame rather than a context of -3 tokens or a negative usage row."""
Rate = Annotated[float, msgspec.Meta(ge=0)]


class _Frame(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=False):
    pass


# ---- shared parts -------------------------------------------------------------


class Hardware(msgspec.Struct, frozen=True):
    """What the provider machine is; informs routing and the dashboard."""

    chip: str = ""
    memory_gb: float = 0.0
    cpu_cores: int = 0
    gpu_cores: int = 0
    memory_bandwidth_gbs: float = 0.0
    os: str = ""


class ModelInfo(msgspec.Struct, frozen=True):
    """One model a node can serve."""

    id: str
    size_bytes: Count = 0
    quantization: str = ""
    weight_hash: str | None = None
    template_render_ok: bool = True
    context_length: Count = 0
    supports_tools: bool = False
    """The chat template renders ``tools`` and the node can parse the model's tool calls."""
    supports_json: bool = False
    """The node can constrain this model's answers to a JSON schema (``SamplingParams.response_format``)."""
    supports_logprobs: bool = False
    """The node reports token log probabilities (``SamplingParams.top_logprobs``)."""
    supports_tool_choice: bool = False
    """The node can force this model to call a tool (``SamplingParams.tool_required``): its tool-call
    format is one the node has a grammar for (JSON between ``<tool_call>`` markers)."""


SlotState = Literal["running", "idle", "idle_shutdown", "crashed", "reloading"]


class SlotCapacity(msgspec.Struct, frozen=True):
    """One loaded model slot's capacity, as the node measures it."""

    model: str
    state: SlotState = "idle"
    num_running: Count = 0
    num_waiting: Count = 0
    max_concurrency: Count = 1
    active_token_budget_used: Count = 0
    active_token_budget_max: Count = 0
    queued_token_budget: Count = 0
    kv_bytes_per_token: Count = 0
    observed_decode_tps: Rate = 0.0
    observed_prefill_tps: Rate = 0.0


class Capacity(msgspec.Struct, frozen=True):
    """A node's capacity snapshot. Stale snapshots (lower ``capacity_seq``) are dropped."""

    capacity_seq: int = 0
    slots: tuple[SlotCapacity, ...] = ()
    total_memory_gb: float = 0.0
    free_for_load_gb: float | None = None


class Usage(msgspec.Struct, frozen=True):
    """Exact token counts for one request, as the node's tokenizer counted them."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_tokens: Count = 0


class ToolCall(msgspec.Struct, frozen=True):
    """A function call the model made: ``arguments`` is JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    """A token and its log probability.

    ``token`` is its text; ``raw`` its bytes in hex, only when they are not
    whole UTF-8 on their own (part of a character split across tokens).
    """

    token: str
    logprob: float
    raw: str = ""

    @property
    def bytes(self) -> list[int]:
        return list(bytes.fromhex(self.raw)) if self.raw else list(self.token.encode())


class TokenLogprob(TopLogprob, frozen=True, array_like=True):
    """One generated token's log probability, and (``top``) the likeliest tokens at its position."""

    top: tuple[TopLogprob, ...] = ()


class ChatMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """One message of the conversation a node renders with its chat template."""

    role: str
    content: str = ""
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class SamplingParams(msgspec.Struct, frozen=True, omit_defaults=True):
    """How to sample one request. ``temperature`` 0 means greedy."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    response_format: str | None = None
    """``"json_object"`` or ``"json_schema"`` when the caller asked for JSON output (OpenAI
    ``response_format``): the node constrains decoding to JSON (``json_schema``), or to any JSON object."""
    json_schema: str | None = None
    """With ``response_format`` ``"json_schema"``: the JSON text of the schema the answer must match."""
    raw_prompt: str | None = None
    """A legacy-completions prompt: tokenized verbatim instead of rendering ``messages`` with the chat template."""
    tools: str | None = None
    """JSON text of the OpenAI ``tools`` list, rendered into the prompt by the node's chat template."""
    continue_final: bool = False
    """The last message is the assistant's answer begun by the caller (Anthropic prefill): the node
    continues it rather than opening a new assistant turn. A node that predates it opens a new turn."""
    count_only: bool = False
    """Only count the prompt's tokens (Anthropic ``count_tokens``): the node renders the prompt and answers
    ``complete`` with the count and nothing generated. One that predates it generates ``max_tokens``."""
    top_logprobs: int | None = None
    """Report each generated token's log probability and this many (0-20) likeliest alternatives
    (OpenAI ``logprobs``/``top_logprobs``); ``None``: none. Never in the clear for a sealed request."""
    tool_required: bool = False
    """The answer must be tool calls and nothing else (OpenAI ``tool_choice`` ``"required"`` or a named
    function, Anthropic ``any`` or ``tool``): the node constrains decoding to its tool-call format."""
    tool_name: str | None = None
    """With ``tool_required``: the one tool the model must call."""
    parallel_tool_calls: bool = True
    """``False``: the answer carries one tool call at most (OpenAI ``parallel_tool_calls``, Anthropic
    ``disable_parallel_tool_use``). The node ends the answer at its first call; the coordinator keeps
    only the first call a node reports, whatever the node (one that predates the flag goes on)."""


class SignedAttestation(msgspec.Struct, frozen=True):
    """A node's attestation bundle as signed (see ``darkbloom.protocol.sealed``).

    ``payload`` is the bundle's JSON text exactly as signed; ``signature`` is
    Ed25519 over it (base64).
    """

    payload: str
    signature: str


# ---- node -> coordinator ----------------------------------------------------------


class Register(_Frame, frozen=True, tag="register"):
    """First frame a node sends after connecting."""

    node_id: NodeId
    models: tuple[ModelInfo, ...]
    protocol_version: int = PROTOCOL_VERSION
    version: str = ""
    backend: str = "mlx"
    hardware: Hardware = Hardware()
    public_key: str | None = None
    auth_token: str | None = None
    capacity: Capacity | None = None
    attestation: SignedAttestation | None = None
    frame_batches: bool = False
    """The node reads a message holding a JSON array of frames (see ``decode_many``); the
    coordinator then joins frames queued together into one message."""


class Heartbeat(_Frame, frozen=True, tag="heartbeat"):
    """Periodic liveness and capacity report (every 5 s by default)."""

    status: Literal["idle", "serving", "draining"] = "idle"
    active_requests: int = 0
    capacity: Capacity | None = None
    memory_pressure: float = 0.0
    cpu_usage: float = 0.0


class Chunk(_Frame, frozen=True, tag="chunk", omit_defaults=True):
    """A piece of generated text for one request, in order (``seq`` from 0).

    For a sealed request ``text`` is empty and ``sealed`` holds the piece
    encrypted under the request's content key (base64).
    """

    request_id: RequestId
    seq: Count
    text: str
    tokens: Count = 1
    sealed: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    """With ``top_logprobs`` asked for: the tokens this chunk reports, in order."""


class Complete(_Frame, frozen=True, tag="complete"):
    """The terminal success frame of a request, with exact usage.

    ``receipt`` is the node's signed receipt (JSON, base64 signature inside)
    when the node has an identity key.
    """

    request_id: RequestId
    usage: Usage
    finish_reason: Literal["stop", "length", "tool_calls", "cancelled"] = "stop"
    receipt: str | None = None
    stop_sequence: str | None = None
    """The caller's stop string that ended generation (finish_reason ``stop``), if one did."""


class AttestationResponse(_Frame, frozen=True, tag="attestation_response"):
    """The node's signature over a challenge nonce and its current state."""

    nonce: str
    signature: str
    state: str = ""


class LoadModelStatus(_Frame, frozen=True, tag="load_model_status"):
    """Progress of a ``load_model``/``unload_model`` command."""

    model: str
    status: Literal["started", "loaded", "load_failed", "unloaded"]
    reason: str = ""


class Error(_Frame, frozen=True, tag="error"):
    """An error about one request (``request_id`` set) or the connection (``None``)."""

    message: str
    code: str = "provider_error"
    status: int = 502
    request_id: RequestId | None = None
    feasible_after_ms: int | None = None


# ---- coordinator -> node ----------------------------------------------------------


class Registered(_Frame, frozen=True, tag="registered"):
    """The coordinator's answer to ``register``."""

    node_id: NodeId
    protocol_version: int = PROTOCOL_VERSION
    heartbeat_interval_s: float = 5.0
    frame_batches: bool = False
    """The coordinator reads batches of frames (see ``decode_many``): the node may send them.
    A coordinator that predates batches leaves it false, and the node sends frames one by one."""


class SealedEnvelope(msgspec.Struct, frozen=True):
    """A request body the coordinator cannot read (see docs/sealed-envelope.md).

    ``ciphertext`` is the JSON request encrypted once under a fresh content
    key; ``recipients`` maps each candidate node id to that content key
    sealed to the node's X25519 key. All binary fields are base64.
    """

    version: int
    ciphertext: str
    nonce: str
    recipients: dict[str, str]
    algorithm: str = "x25519-xsalsa20poly1305+xchacha20poly1305"


class InferenceRequest(_Frame, frozen=True, tag="inference_request"):
    """Run one chat completion on a model the node serves.

    Exactly one of ``messages`` (coordinator-visible) or ``sealed`` is set;
    for a sealed request ``params`` holds only the plaintext routing hints.
    """

    request_id: RequestId
    model: str
    messages: tuple[ChatMessage, ...] = ()
    params: SamplingParams = SamplingParams()
    sealed: SealedEnvelope | None = None


class Cancel(_Frame, frozen=True, tag="cancel"):
    """Stop a request; the node answers with ``complete`` (finish_reason cancelled)."""

    request_id: RequestId
    reason: str = ""


class AttestationChallenge(_Frame, frozen=True, tag="attestation_challenge"):
    """A fresh 32-byte random nonce (hex) the node must sign within the deadline."""

    nonce: str
    timestamp: float


class TrustStatus(_Frame, frozen=True, tag="trust_status"):
    """The coordinator's verdict on the node's trust (sent after each challenge)."""

    trust_level: Literal["none", "software", "hardware"]
    status: Literal["trusted", "fenced", "untrusted"]
    reason: str = ""


class LoadModel(_Frame, frozen=True, tag="load_model"):
    """Ask the node to load a model it has on disk (the warm pool)."""

    model: str


class UnloadModel(_Frame, frozen=True, tag="unload_model"):
    """Ask the node to unload a model."""

    model: str


Frame = Union[
    Register,
    Registered,
    Heartbeat,
    InferenceRequest,
    Chunk,
    Complete,
    Error,
    Cancel,
    AttestationChallenge,
    AttestationResponse,
    TrustStatus,
    LoadModel,
    UnloadModel,
    LoadModelStatus,
]
"""Every frame either side may send."""

FRAME_TYPES: tuple[type, ...] = Frame.__args__  # type: ignore[attr-defined]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Frame)
_many_decoder = msgspec.json.Decoder(Union[Frame, list[Frame]])


def encode(frame: Frame) -> bytes:
    """Serialize a frame to its JSON wire form."""
    return _encoder.encode(frame)


def decode(data: bytes | str) -> Frame:
    """Parse one frame.

    Raises:
        ProtocolError: the data is not exactly one valid frame.
    """
    _check_size(data)
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError) as exc:  # bad UTF-8 in a tag, or lone surrogates in a str
        raise ProtocolError(str(exc)) from None


def join(encoded: list[bytes]) -> bytes:
    """One message carrying already-encoded frames: the frame itself when alone, else a JSON array.

    A batch is what one turn of a sender produced together (every token of
    a decode step, every request a burst dispatched): one WebSocket message,
    one system call and one parse instead of one each per frame.
    """
    return encoded[0] if len(encoded) == 1 else b"[" + b",".join(encoded) + b"]"


def decode_many(data: bytes | str) -> list[Frame]:
    """Parse one message: a single frame or a batch of them (see ``join``), in order.

    Raises:
        ProtocolError: the data is neither a valid frame nor an array of valid frames.
    """
    _check_size(data)
    try:
        out = _many_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise ProtocolError(str(exc)) from None
    return out if isinstance(out, list) else [out]


def _check_size(data: bytes | str) -> None:
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
