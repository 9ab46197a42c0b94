"""The OpenAI chat adapter: what it accepts, what it refuses (and how), what it forwards to a node."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkbloom.protocol import ChatMessage, InferenceRequest, RequestId, SamplingParams, encode
from darkbloom.protocol.openai import (
    DEFAULT_MAX_TOKENS,
    ChatCompletionRequest,
    RequestError,
    StreamOptions,
    parse_chat_request,
    to_internal,
)

USER_HI = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    """A chat completion body: a valid one, with ``fields`` overriding (``None`` removes a key)."""
    obj: dict[str, Any] = {"model": "tiny", "messages": USER_HI}
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


def refused(data: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(data)
    err = info.value
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.body() == {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
    return err


# ---- accepted -----------------------------------------------------------------------------


def test_minimal_body_is_accepted() -> None:
    req = parse_chat_request(body())
    assert req.model == "tiny"
    assert [m.role for m in req.messages] == ["user"]
    assert req.stream is False


def test_full_body_is_accepted_and_unknown_fields_ignored() -> None:
    req = parse_chat_request(
        body(
            messages=[
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}], "name": "alice"},
                {"role": "assistant", "content": None},
                {"role": "tool", "content": "42", "tool_call_id": "call_1"},
            ],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=64,
            max_completion_tokens=32,
            temperature=0,
            top_p=0.5,
            seed=7,
            stop=["\n\n", "END"],
            n=1,
            user="u-1",
            metadata={"k": "v"},
            logit_bias={"50256": -100},
            presence_penalty=0.1,
        )
    )
    assert req.stream
    assert req.stream_options == StreamOptions(include_usage=True)
    assert (req.max_tokens, req.max_completion_tokens, req.temperature, req.top_p, req.seed) == (64, 32, 0, 0.5, 7)
    assert req.stop == ["\n\n", "END"]


@pytest.mark.parametrize("temperature", [0, 0.0, 1, 2, 2.0])
def test_temperature_bounds_are_inclusive(temperature: float) -> None:
    assert parse_chat_request(body(temperature=temperature)).temperature == temperature


def test_surrounding_whitespace_is_fine() -> None:
    assert parse_chat_request(b"\n  " + body() + b"\r\n").model == "tiny"


# ---- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (body()[:-7], "JSON"),  # truncated
        (b'{"model": "tiny", "messages": [],}', "JSON"),  # trailing comma
        (b"{'model': 'tiny', 'messages': []}", "JSON"),  # single quotes
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "JSON"),  # binary garbage
        (b"\xff\xfe{\x00", "JSON"),
        (body() + b"{}", "JSON"),  # two documents
        (b'"hello"', "object"),
        (b"42", "object"),
        (b"null", "object"),
        (b"[]", "object"),
        (b"[" + body() + b"]", "object"),
    ],
    ids=[
        "empty",
        "whitespace",
        "truncated",
        "trailing-comma",
        "single-quotes",
        "binary-png",
        "binary-utf16",
        "two-documents",
        "bare-string",
        "bare-number",
        "null",
        "empty-array",
        "array-of-body",
    ],
)
def test_malformed_body_is_a_400_that_says_why(data: bytes, hint: str) -> None:
    err = refused(data)
    assert hint in err.message
    assert err.param is None


@pytest.mark.parametrize(
    ("data", "param", "hint"),
    [
        (body(model=None), "model", "model"),
        (body(model=""), "model", "model"),
        (body(model=7), "model", "str"),
        (body(messages=None), "messages", "messages"),
        (body(messages=[]), "messages", "messages"),
        (body(messages="hi"), "messages", "array"),
        (body(messages=[{"content": "hi"}]), "messages", "role"),
        (body(messages=[{"role": "wizard", "content": "hi"}]), "messages", "wizard"),
        (body(messages=[{"role": "user", "content": 3}]), "messages", "content"),
        (body(n=2), "n", "n"),
        (body(max_tokens=0), "max_tokens", "positive"),
        (body(max_tokens=-1), "max_tokens", "positive"),
        (body(max_tokens="x"), "max_tokens", "int"),
        (body(max_tokens=1.5), "max_tokens", "int"),
        (body(max_completion_tokens=0), "max_completion_tokens", "positive"),
        (body(temperature=2.5), "temperature", "between 0 and 2"),
        (body(temperature=-0.1), "temperature", "between 0 and 2"),
        (body(temperature="hot"), "temperature", "float"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
            "temperature",
            "",
        ),
        (body(top_p=0), "top_p", "top_p"),
        (body(top_p=1.5), "top_p", "top_p"),
        (body(stop=5), "stop", "str"),
        (body(stream="yes"), "stream", "bool"),
        (body(continue_final_message=True), "continue_final_message", "assistant"),
        (
            body(messages=[*USER_HI, {"role": "assistant", "content": ""}], continue_final_message=True),
            "continue_final_message",
            "text to continue",
        ),
    ],
    ids=[
        "missing-model",
        "empty-model",
        "numeric-model",
        "missing-messages",
        "empty-messages",
        "string-messages",
        "message-without-role",
        "unknown-role",
        "numeric-content",
        "n=2",
        "max_tokens=0",
        "max_tokens=-1",
        "max_tokens=x",
        "max_tokens=1.5",
        "max_completion_tokens=0",
        "temperature=2.5",
        "temperature=-0.1",
        "temperature=hot",
        "temperature=1e999",
        "top_p=0",
        "top_p=1.5",
        "stop=5",
        "stream=yes",
        "continue-a-user-message",
        "continue-an-empty-message",
    ],
)
def test_invalid_field_is_a_400_naming_the_param(data: bytes, param: str, hint: str) -> None:
    err = refused(data)
    assert err.param == param
    assert hint in err.message


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_a_400(data: bytes) -> None:
    try:
        req = parse_chat_request(data)
    except RequestError as err:
        assert err.status == 400
        assert err.message
    else:
        assert isinstance(req, ChatCompletionRequest)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
FIELDS = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "seed",
]


@given(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_random_fields_parse_or_are_a_400(fields: dict[str, Any]) -> None:
    try:
        parse_chat_request(body(**fields))
    except RequestError as err:
        assert err.status == 400
        assert err.message


# ---- to_internal --------------------------------------------------------------------------


def internal(**fields: Any) -> tuple[tuple[ChatMessage, ...], SamplingParams]:
    return to_internal(parse_chat_request(body(**fields)))


def test_defaults_when_sampling_is_unspecified() -> None:
    messages, params = internal()
    assert messages == (ChatMessage(role="user", content="hi"),)
    assert params == SamplingParams(max_tokens=DEFAULT_MAX_TOKENS, temperature=1.0, top_p=1.0, seed=None, stop=())


def test_continue_final_message_reaches_the_node() -> None:
    turns = [*USER_HI, {"role": "assistant", "content": "Hello, I am"}]
    assert internal(messages=turns, continue_final_message=True)[1].continue_final
    assert not internal(messages=turns)[1].continue_final  # OpenAI's own meaning: a finished turn


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert internal(max_tokens=100, max_completion_tokens=10)[1].max_tokens == 10
    assert internal(max_tokens=100)[1].max_tokens == 100
    assert internal(max_completion_tokens=10)[1].max_tokens == 10


def test_sampling_is_carried_over() -> None:
    _, params = internal(temperature=0, top_p=0.25, seed=7)
    assert (params.temperature, params.top_p, params.seed) == (0, 0.25, 7)


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("END", ("END",)), (["a", "b"], ("a", "b")), ([], ()), (None, ())],
)
def test_stop_becomes_a_tuple(stop: Any, expected: tuple[str, ...]) -> None:
    assert internal(stop=stop)[1].stop == expected


def test_user_and_metadata_never_reach_a_node() -> None:
    messages, params = internal(user="user-123@example.com", metadata={"secret": "s3cr3t"})
    wire = encode(InferenceRequest(request_id=RequestId("r"), model="tiny", messages=messages, params=params))
    assert b"user-123" not in wire
    assert b"s3cr3t" not in wire


def test_developer_role_becomes_system_and_others_are_kept() -> None:
    messages, _ = internal(
        messages=[
            {"role": "developer", "content": "d"},
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u", "name": "alice"},
            {"role": "assistant", "content": "a"},
            {"role": "tool", "content": "t", "tool_call_id": "call_1"},
        ]
    )
    assert messages == (
        ChatMessage(role="system", content="d"),
        ChatMessage(role="system", content="s"),
        ChatMessage(role="user", content="u", name="alice"),
        ChatMessage(role="assistant", content="a"),
        ChatMessage(role="tool", content="t", tool_call_id="call_1"),
    )


def test_content_parts_are_flattened_and_null_content_is_empty() -> None:
    messages, _ = internal(
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]},
            {"role": "user", "content": [{"type": "text"}]},
            {"role": "assistant", "content": None},
            {"role": "user", "content": []},
        ]
    )
    assert [m.content for m in messages] == ["Hello, world", "", "", ""]


def test_non_text_content_part_is_a_400_on_messages() -> None:
    req = parse_chat_request(
        body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}])
    )
    with pytest.raises(RequestError) as info:
        to_internal(req)
    assert (info.value.status, info.value.param) == (400, "messages")
    assert "image_url" in info.value.message
