"""The node<->coordinator wire: every frame round-trips; every bad input raises ``ProtocolError``.

Like websockets' ``fuzzing/fuzz_websocket_parser.py``: whatever bytes arrive,
``decode`` either returns a frame or raises the one documented error.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkbloom.protocol import (
    AttestationChallenge,
    AttestationResponse,
    LoadModel,
    LoadModelStatus,
    SealedEnvelope,
    TrustStatus,
    UnloadModel,
    FRAME_TYPES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Cancel,
    Capacity,
    ChatMessage,
    Chunk,
    Complete,
    Error,
    Hardware,
    Heartbeat,
    InferenceRequest,
    ModelInfo,
    NodeId,
    ProtocolError,
    Register,
    Registered,
    RequestId,
    SamplingParams,
    SlotCapacity,
    Usage,
    decode,
    decode_many,
    encode,
    join,
)

TAGS = {cls.__struct_config__.tag: cls for cls in FRAME_TYPES}

# ---- strategies ---------------------------------------------------------------------------


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for any type a frame field uses, recursing into nested structs.

    Written out rather than ``st.from_type`` so that floats stay finite (JSON
    has no NaN) and ints stay in the 64-bit range msgspec encodes. An unknown
    field type raises, so a new kind of field cannot go untested silently.
    """
    if isinstance(tp, typing.NewType):
        return strategy_for(tp.__supertype__)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = get_type_hints(tp, include_extras=True)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name]) for f in msgspec.structs.fields(tp)})
    origin = get_origin(tp)
    if origin is Annotated:  # a constrained number: only values the protocol accepts
        base, *metas = get_args(tp)
        low = next(m.ge for m in metas if isinstance(m, msgspec.Meta) and m.ge is not None)
        if base is int:
            return st.integers(min_value=low, max_value=2**63 - 1)
        return st.floats(min_value=low, allow_nan=False, allow_infinity=False)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin in (Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in get_args(tp)])
    if origin is dict:
        key, value = get_args(tp)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
    if origin is tuple:
        item, ellipsis = get_args(tp)
        assert ellipsis is Ellipsis
        return st.lists(strategy_for(item), max_size=3).map(tuple)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st.text(max_size=30),
        int: st.integers(min_value=-(2**63), max_value=2**63 - 1),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        type(None): st.none(),
    }
    if tp in simple:
        return simple[tp]
    raise TypeError(f"no strategy for frame field type {tp!r}; add one")


frames = st.one_of([strategy_for(cls) for cls in FRAME_TYPES])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value, including NaN/Infinity (which ``json.dumps`` writes but JSON forbids)."""

FIELD_NAMES = sorted({f.name for cls in FRAME_TYPES for f in msgspec.structs.fields(cls)})


@st.composite
def tagged_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ``type`` tag with random fields, mostly named like real ones."""
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=10), json_values, max_size=6))
    return {**fields, "type": draw(st.sampled_from(sorted(TAGS)))}


@st.composite
def near_misses(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame's JSON with one field replaced by a random JSON value."""
    obj = msgspec.to_builtins(draw(frames))
    key = draw(st.sampled_from(sorted(obj)))
    obj[key] = draw(json_values)
    return obj


@st.composite
def corrupted_frames(draw: st.DrawFn) -> bytes:
    """A valid frame's bytes, truncated or with some bytes overwritten."""
    data = bytearray(encode(draw(frames)))
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


def assert_frame_or_protocol_error(data: bytes | str) -> None:
    """``decode`` returns a frame (which survives another round trip) or raises ``ProtocolError``."""
    try:
        frame = decode(data)
    except ProtocolError:
        return
    assert isinstance(frame, FRAME_TYPES)
    assert decode(encode(frame)) == frame


# ---- round trips --------------------------------------------------------------------------

_capacity = Capacity(
    capacity_seq=42,
    slots=(
        SlotCapacity(
            model="mlx-community/Qwen3-8B-4bit",
            state="running",
            num_running=3,
            num_waiting=1,
            max_concurrency=8,
            active_token_budget_used=12_288,
            active_token_budget_max=65_536,
            queued_token_budget=2_048,
            kv_bytes_per_token=73_728,
            observed_decode_tps=41.7,
            observed_prefill_tps=812.5,
        ),
    ),
    total_memory_gb=64.0,
    free_for_load_gb=21.5,
)

REALISTIC: dict[type, list[Any]] = {
    Register: [
        Register(
            node_id=NodeId("node-7f3a"),
            models=(
                ModelInfo(
                    id="mlx-community/Qwen3-8B-4bit",
                    size_bytes=4_617_089_024,
                    quantization="4bit",
                    weight_hash="sha256:9c1e5d",
                    context_length=32_768,
                ),
            ),
            version="0.1.0",
            hardware=Hardware(
                chip="Apple M3 Max",
                memory_gb=64.0,
                cpu_cores=16,
                gpu_cores=40,
                memory_bandwidth_gbs=400.0,
                os="macOS 15.1",
            ),
            public_key="h2Zl3u0aQ1mX0oK4l9i8C6f1bB2w5cT3pYqR7sVnE0A=",
            auth_token="dbk_live_0123456789",
            capacity=_capacity,
        ),
        Register(node_id=NodeId("n"), models=()),
    ],
    Registered: [Registered(node_id=NodeId("node-7f3a"), heartbeat_interval_s=2.5)],
    Heartbeat: [
        Heartbeat(status="serving", active_requests=3, capacity=_capacity, memory_pressure=0.62, cpu_usage=0.31),
        Heartbeat(),
    ],
    InferenceRequest: [
        InferenceRequest(
            request_id=RequestId("req_01HZX3"),
            model="mlx-community/Qwen3-8B-4bit",
            messages=(
                ChatMessage(role="system", content="You are terse."),
                ChatMessage(role="user", content="Name a prime > 100 \N{SNOWMAN}", name="alice"),
                ChatMessage(role="tool", content='{"ok": true}', tool_call_id="call_1"),
            ),
            params=SamplingParams(max_tokens=128, temperature=0.7, top_p=0.9, seed=7, stop=("\n\n", "END")),
        ),
        InferenceRequest(request_id=RequestId("r"), model="m", messages=(ChatMessage(role="user"),)),
        InferenceRequest(
            request_id=RequestId("r2"),
            model="m",
            params=SamplingParams(max_tokens=64),
            sealed=SealedEnvelope(version=1, ciphertext="Y2lwaGVy", nonce="bm9uY2U=", recipients={"node-a": "a2V5"}),
        ),
    ],
    Chunk: [
        Chunk(request_id=RequestId("req_01HZX3"), seq=0, text="Hello, wor"),
        Chunk(RequestId("r"), 17, "", tokens=3),
    ],
    Complete: [
        Complete(
            request_id=RequestId("req_01HZX3"), usage=Usage(prompt_tokens=31, completion_tokens=12, cached_tokens=16)
        ),
        Complete(request_id=RequestId("r"), usage=Usage(), finish_reason="cancelled"),
    ],
    Error: [
        Error(
            message="node is at capacity",
            code="capacity",
            status=503,
            request_id=RequestId("r"),
            feasible_after_ms=1500,
        ),
        Error(message="unsupported protocol version 9"),
    ],
    Cancel: [Cancel(request_id=RequestId("req_01HZX3"), reason="client disconnected")],
    AttestationChallenge: [AttestationChallenge(nonce="ab" * 32, timestamp=1795500000.25)],
    AttestationResponse: [AttestationResponse(nonce="ab" * 32, signature="c2ln", state='{"models":["m"]}')],
    TrustStatus: [
        TrustStatus(trust_level="software", status="trusted"),
        TrustStatus(trust_level="none", status="fenced", reason="challenge answer late"),
    ],
    LoadModel: [LoadModel(model="qwen3-8b")],
    UnloadModel: [UnloadModel(model="qwen3-8b")],
    LoadModelStatus: [
        LoadModelStatus(model="qwen3-8b", status="loaded"),
        LoadModelStatus(model="qwen3-8b", status="load_failed", reason="needs 9.1 GiB, 4.0 GiB free under the cap"),
    ],
}


def test_every_frame_type_has_a_realistic_example() -> None:
    assert set(REALISTIC) == set(FRAME_TYPES)


@pytest.mark.parametrize("frame", [f for cls in FRAME_TYPES for f in REALISTIC[cls]], ids=lambda f: type(f).__name__)
def test_realistic_frame_round_trips(frame: Any) -> None:
    data = encode(frame)
    assert decode(data) == frame
    assert decode(data.decode()) == frame  # text WebSocket frames arrive as str
    wire = json.loads(data)
    assert wire["type"] == type(frame).__struct_config__.tag


@pytest.mark.parametrize("cls", FRAME_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_generated_frame_round_trips(cls: type, data: st.DataObject) -> None:
    frame = data.draw(strategy_for(cls))
    assert decode(encode(frame)) == frame


def test_wire_form_is_flat_snake_case_json_with_a_type_tag() -> None:
    wire = json.loads(encode(Chunk(request_id=RequestId("r1"), seq=3, text="hi", tokens=2)))
    assert wire == {"type": "chunk", "request_id": "r1", "seq": 3, "text": "hi", "tokens": 2}
    assert json.loads(encode(Registered(node_id=NodeId("n"))))["protocol_version"] == PROTOCOL_VERSION


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    data = b'{"type": "cancel", "request_id": "r1", "reason": "x", "added_in_v2": [1, 2]}'
    assert decode(data) == Cancel(request_id=RequestId("r1"), reason="x")


# ---- malformed input ----------------------------------------------------------------------


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    assert_frame_or_protocol_error(data)


@given(st.text(st.characters(exclude_categories=()), max_size=100))
def test_random_text_including_lone_surrogates_decode_or_raise_protocol_error(text: str) -> None:
    assert_frame_or_protocol_error(text)


@given(json_values)
def test_random_json_values_decode_or_raise_protocol_error(value: Any) -> None:
    assert_frame_or_protocol_error(json.dumps(value).encode())


@given(tagged_dicts())
def test_valid_tag_with_random_fields_decodes_or_raises_protocol_error(obj: dict[str, Any]) -> None:
    assert_frame_or_protocol_error(json.dumps(obj).encode())


@given(near_misses())
def test_frame_with_one_field_randomised_decodes_or_raises_protocol_error(obj: dict[str, Any]) -> None:
    assert_frame_or_protocol_error(json.dumps(obj).encode())


@given(corrupted_frames())
def test_corrupted_frame_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    assert_frame_or_protocol_error(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"null",
        b"[]",
        b'"chunk"',
        b"{}",
        b'{"type": null}',
        b'{"type": 1, "request_id": "r"}',
        b'{"request_id": "r", "seq": 0, "text": "x"}',
        b'{"type": "chunk", "request_id": "r", "seq": 0}',
        b'{"type": "chunk", "request_id": "r", "seq": "0", "text": "x"}',
        b'{"type": "chunk", "request_id": "r", "seq": 0, "text": "x"} {}',
        b'{"type": "heartbeat", "status": "asleep"}',
        b'{"type": "heartbeat", "cpu_usage": NaN}',
        b'{"type": "complete", "request_id": "r", "usage": {"prompt_tokens": -1000000}}',  # a negative charge
        b'{"type": "register", "node_id": "n", "models": [{"id": "m", "context_length": -3}]}',
        b'{"type": "heartbeat", "capacity": {"slots": [{"model": "m", "max_concurrency": -5}]}}',
        b'{"type": "chunk", "request_id": "r", "seq": -1, "text": "x"}',
        b'{"type": "cancel", "request_id": "\\ud800"}',
        b"\xff\xfe\x00\x01",
        b'{"type": "\x80ancel", "request_id": "r"}',  # invalid UTF-8 in the tag (found by hypothesis)
        b'{"type": "cancel", "request_id": "\xc3("}',  # invalid UTF-8 in a field
        b"[" * 100_000,
    ],
)
def test_malformed_frames_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(data)


def test_lone_surrogate_in_text_frame_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode('{"type": "cancel", "request_id": "\ud800"}')


@pytest.mark.parametrize("tag", ["chunks", "Chunk", "CHUNK", "", "inference", "ping"])
def test_unknown_type_raises_protocol_error_naming_it(tag: str) -> None:
    with pytest.raises(ProtocolError, match="type"):
        decode(json.dumps({"type": tag, "request_id": "r", "seq": 0, "text": "x"}))


def _chunk_of_size(size: int) -> bytes:
    empty = len(encode(Chunk(request_id=RequestId("r"), seq=0, text="")))
    data = encode(Chunk(request_id=RequestId("r"), seq=0, text="x" * (size - empty)))
    assert len(data) == size
    return data


def test_frame_of_exactly_the_limit_decodes() -> None:
    assert isinstance(decode(_chunk_of_size(MAX_FRAME_BYTES)), Chunk)


@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_oversize_frame_raises_protocol_error_before_parsing(as_text: bool) -> None:
    data = _chunk_of_size(MAX_FRAME_BYTES + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(data.decode() if as_text else data)
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))  # not even JSON: the size check comes first


# ---- batches: several frames in one message ------------------------------------------------

ALL_REALISTIC = [f for cls in FRAME_TYPES for f in REALISTIC[cls]]


@given(st.lists(st.sampled_from(ALL_REALISTIC), min_size=1, max_size=20))
def test_a_batch_decodes_to_its_frames_in_order(frames: list[Any]) -> None:
    data = join([encode(f) for f in frames])
    assert decode_many(data) == frames
    assert decode_many(data.decode()) == frames


def test_one_frame_is_sent_as_itself_and_reads_as_a_batch_of_one() -> None:
    chunk = Chunk(request_id=RequestId("r1"), seq=0, text="hi")
    assert join([encode(chunk)]) == encode(chunk)  # a peer that never batches sees nothing new
    assert decode_many(encode(chunk)) == [chunk]


def test_a_batch_is_a_json_array_of_ordinary_frames() -> None:
    a, b = Chunk(request_id=RequestId("r1"), seq=0, text="a"), Cancel(request_id=RequestId("r2"))
    assert json.loads(join([encode(a), encode(b)])) == [json.loads(encode(a)), json.loads(encode(b))]


@pytest.mark.parametrize(
    "data",
    [
        b"[1]",
        b'[{"type": "cancel"}]',  # a frame missing a required field
        b'[{"type": "cancel", "request_id": "r"}, {"type": "warp_drive"}]',  # one bad frame spoils the batch
        b'[[{"type": "cancel", "request_id": "r"}]]',  # batches do not nest
        b'[{"type": "cancel", "request_id": "r"}',
        b"[" * 100_000,
        b'{"type": "cancel"}',
    ],
)
def test_malformed_batches_raise_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_many(data)


def test_an_oversize_batch_raises_before_parsing() -> None:
    one = encode(Chunk(request_id=RequestId("r"), seq=0, text="x" * 1000))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_many(join([one] * (MAX_FRAME_BYTES // len(one) + 1)))


@given(st.binary(max_size=200))
def test_random_bytes_decode_as_a_batch_or_raise_protocol_error(data: bytes) -> None:
    try:
        frames = decode_many(data)
    except ProtocolError:
        return
    assert all(isinstance(f, FRAME_TYPES) for f in frames)
