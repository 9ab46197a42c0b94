"""The completions, Responses and Messages parsers: any input parses or is a 400; what they forward to a node."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkbloom.protocol import ChatMessage, Usage
from darkbloom.protocol.anthropic import error_body, parse_count_tokens_request, parse_messages_request, stop_reason
from darkbloom.protocol.openai import RequestError
from darkbloom.protocol.openai_completions import completion_params, parse_completion_request
from darkbloom.protocol.openai_responses import ResponseState, parse_responses_request

PARSERS: dict[str, tuple[Callable[[bytes], Any], dict[str, Any]]] = {
    "completions": (parse_completion_request, {"model": "m", "prompt": "hi"}),
    "responses": (parse_responses_request, {"model": "m", "input": "hi"}),
    "messages": (
        parse_messages_request,
        {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ),
    "count_tokens": (parse_count_tokens_request, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
FIELDS = [
    "model", "prompt", "input", "messages", "max_tokens", "max_output_tokens", "temperature", "top_p", "stop",
    "stop_sequences", "system", "instructions", "n", "best_of", "echo", "stream", "seed", "presence_penalty",
]  # fmt: skip


@pytest.mark.parametrize("api", list(PARSERS))
@given(data=st.binary(max_size=200))
def test_any_bytes_parse_or_are_a_400(api: str, data: bytes) -> None:
    parse, _ = PARSERS[api]
    try:
        parse(data)
    except RequestError as err:
        assert err.status == 400 and err.message


@pytest.mark.parametrize("api", list(PARSERS))
@given(fields=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))
def test_random_fields_parse_or_are_a_400(api: str, fields: dict[str, Any]) -> None:
    parse, good = PARSERS[api]
    try:
        parse(json.dumps({**good, **fields}).encode())
    except RequestError as err:
        assert err.status == 400 and err.message


def test_completion_prompt_is_forwarded_verbatim_with_openai_defaults() -> None:
    req, prompt = parse_completion_request(b'{"model": "m", "prompt": ["  raw <b>text</b>"], "stop": "\\n"}')
    params = completion_params(req, prompt)
    assert (params.raw_prompt, params.max_tokens, params.stop) == ("  raw <b>text</b>", 16, ("\n",))


@pytest.mark.parametrize("prompt", [[], ["a", "b"], [1, 2, 3], [[1, 2]], ""])
def test_batched_token_or_empty_prompts_are_refused(prompt: Any) -> None:
    with pytest.raises(RequestError) as info:
        parse_completion_request(json.dumps({"model": "m", "prompt": prompt}).encode())
    assert info.value.param == "prompt"


def test_responses_instructions_and_items_become_chat_messages() -> None:
    body = {
        "model": "m",
        "instructions": "be brief",
        "input": [
            {"role": "developer", "content": "d"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
        ],
        "max_output_tokens": 9,
        "metadata": {"k": "secret"},
    }
    _, messages, params = parse_responses_request(json.dumps(body).encode())
    assert messages == (
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="system", content="d"),
        ChatMessage(role="user", content="ab"),
        ChatMessage(role="assistant", content="c"),
    )
    assert params.max_tokens == 9


@pytest.mark.parametrize(
    ("item", "hint"),
    [
        ({"type": "function_call_output", "output": "18C"}, "call_id"),
        ({"type": "function_call", "call_id": "c1"}, "call_id and name"),
        ({"type": "reasoning", "summary": []}, "'reasoning' is not supported"),
        ({"role": "user", "content": [{"type": "input_image"}]}, "input_image"),
    ],
)
def test_non_text_responses_items_are_refused(item: dict[str, Any], hint: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_responses_request(json.dumps({"model": "m", "input": [item]}).encode())
    assert info.value.param == "input" and hint in info.value.message


def test_response_state_event_sequence_numbers_are_consecutive() -> None:
    req, _, _ = parse_responses_request(b'{"model": "m", "input": "hi"}')
    state = ResponseState("resp_1", "msg_1", "m", 0, req)
    events = state.opening() + state.add_text("a") + state.add_text("b")
    state.finish("stop", Usage(prompt_tokens=3, completion_tokens=2))
    events += state.closing()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert (
        events[-1]["type"] == "response.completed" and events[-1]["response"]["output"][0]["content"][0]["text"] == "ab"
    )
    assert events[-1]["response"]["usage"]["total_tokens"] == 5


def test_messages_system_blocks_and_stop_sequences() -> None:
    body = {
        "model": "m",
        "max_tokens": 4,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}],
        "stop_sequences": ["STOP", ""],
        "temperature": 0.5,
    }
    _, messages, params = parse_messages_request(json.dumps(body).encode())
    assert messages == (ChatMessage(role="system", content="sys"), ChatMessage(role="user", content="q"))
    assert (params.stop, params.temperature, params.max_tokens) == (("STOP",), 0.5, 4)


def _messages(*turns: tuple[str, str]) -> bytes:
    return json.dumps({"model": "m", "max_tokens": 4, "messages": [{"role": r, "content": c} for r, c in turns]}).encode()


def test_a_final_assistant_message_is_a_prefill_to_continue() -> None:
    _, messages, params = parse_messages_request(_messages(("user", "q"), ("assistant", "The answer is")))
    assert messages[-1] == ChatMessage(role="assistant", content="The answer is") and params.continue_final
    _, _, params = parse_messages_request(_messages(("user", "q"), ("assistant", "a"), ("user", "and?")))
    assert not params.continue_final
    # An empty one asks for nothing: an ordinary answer.
    _, messages, params = parse_messages_request(_messages(("user", "q"), ("assistant", "")))
    assert messages == (ChatMessage(role="user", content="q"),) and not params.continue_final


@pytest.mark.parametrize(
    ("turns", "needle"),
    [((("user", "q"), ("assistant", "The answer is ")), "trailing whitespace"), ((("assistant", ""),), "user message")],
)
def test_a_prefill_anthropic_refuses_is_a_400(turns: tuple[tuple[str, str], ...], needle: str) -> None:
    with pytest.raises(RequestError, match=needle) as info:
        parse_messages_request(_messages(*turns))
    assert (info.value.status, info.value.param) == (400, "messages")


def test_count_tokens_renders_the_conversation_as_messages_does_and_generates_nothing() -> None:
    body = {"model": "m", "system": "sys", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]}
    _, counted, params = parse_count_tokens_request(json.dumps(body).encode())
    _, sent, _ = parse_messages_request(json.dumps({**body, "max_tokens": 9}).encode())
    assert counted == sent and params.count_only and params.continue_final and params.max_tokens == 1
    with pytest.raises(RequestError, match="tools") as info:
        parse_count_tokens_request(json.dumps({**body, "tools": [{"name": "f"}]}).encode())
    assert info.value.param == "tools"


def test_messages_temperature_is_anthropics_range() -> None:
    with pytest.raises(RequestError) as info:
        parse_messages_request(
            b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "q"}], "temperature": 1.5}'
        )
    assert info.value.param == "temperature"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"), (413, "request_too_large"),
     (429, "rate_limit_error"), (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error")],
)  # fmt: skip
def test_anthropic_error_types_follow_the_status(status: int, kind: str) -> None:
    assert error_body(RequestError(status, "why")) == {"type": "error", "error": {"type": kind, "message": "why"}}


def test_stop_reasons() -> None:
    assert stop_reason("stop", None) == "end_turn"
    assert stop_reason("stop", "END") == "stop_sequence"
    assert stop_reason("length", None) == "max_tokens"


def test_a_failed_tool_result_tells_the_model_it_failed() -> None:
    def result(**block: Any) -> str:
        body = {
            "model": "m", "max_tokens": 5,
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", **block}]},
            ],
        }  # fmt: skip
        _, messages, _ = parse_messages_request(json.dumps(body).encode())
        (tool,) = [m for m in messages if m.role == "tool"]
        return tool.content

    assert result(content="timeout after 5 s", is_error=True) == "Error: timeout after 5 s"
    assert result(is_error=True) == "Error"
    assert result(content="18C") == result(content="18C", is_error=False) == "18C"
