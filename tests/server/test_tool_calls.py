"""Tool calling through the coordinator, parsed by the official openai SDK.

A stand-in node (the real provider WebSocket protocol) plays a tool-capable
model, so these tests pin the coordinator's side: what reaches the node, and
what the SDK receives. The node's own parsing is tested in tests/node.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anthropic
import openai
import pytest

from darkbloom.protocol import Chunk, Complete, InferenceRequest, ModelInfo, Register, ToolCall, Usage, decode, encode
from tests.server.conftest import Coordinator

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
T = TypeVar("T")
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
CALL_2 = ToolCall(id="call_2", name="get_weather", arguments='{"city": "Oslo"}')
CALL_3 = ToolCall(id="call_3", name="get_weather", arguments='{"city": "Rome"}')


def _tool_node(ws: Any, forcing: bool = False) -> None:
    """A stand-in tool-capable node; ``forcing``: it can also force a call (``supports_tool_choice``)."""
    model = ModelInfo(id="m1", supports_tools=True, supports_tool_choice=forcing)
    ws.send_bytes(encode(Register(node_id="tools-node", models=(model,))))  # type: ignore[arg-type]
    decode(ws.receive_bytes())


def _sdk(coordinator: Coordinator) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=coordinator.key, http_client=coordinator.client, max_retries=0)


def _answering(text: str, *call_chunks: tuple[tuple[ToolCall, ...], int], usage: Usage) -> Callable[[Any, dict[str, Any]], None]:
    """A stand-in node's answer: ``text``, then a chunk per group of calls (with its token count), then ``complete``."""

    def answer(ws: Any, holder: dict[str, Any]) -> None:
        req = decode(ws.receive_bytes())
        assert isinstance(req, InferenceRequest)
        holder["request"] = req
        rid = req.request_id
        ws.send_bytes(encode(Chunk(request_id=rid, seq=0, text=text)))
        for seq, (calls, tokens) in enumerate(call_chunks, 1):
            ws.send_bytes(encode(Chunk(request_id=rid, seq=seq, text="", tokens=tokens, tool_calls=calls)))
        ws.send_bytes(encode(Complete(request_id=rid, usage=usage, finish_reason="tool_calls")))

    return answer


_answer_with_a_call = _answering("Let me check. ", ((CALL,), 12), usage=Usage(30, 14))
# A model that calls tools in parallel: two calls in one chunk, a third in the next.
_answer_with_three_calls = _answering("Checking all three. ", ((CALL, CALL_2), 20), ((CALL_3,), 10), usage=Usage(30, 34))


def _asked(
    coordinator: Coordinator, ask: Callable[[], T], answer: Callable[[Any, dict[str, Any]], None] = _answer_with_a_call
) -> tuple[T, InferenceRequest]:
    """Run ``ask`` (an SDK call) against a stand-in tool-capable node; by default it answers with text and one call."""
    holder: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)
        node = threading.Thread(target=answer, args=(ws, holder))
        node.start()
        out = ask()
        node.join(10)
    return out, holder["request"]


def test_non_streaming_tool_call_reaches_the_sdk(coordinator: Coordinator) -> None:
    resp, request = _asked(
        coordinator,
        lambda: _sdk(coordinator).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "weather in Paris?"}], tools=TOOLS  # type: ignore[arg-type]
        ),
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check. "
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == ("call_1", "get_weather", {"city": "Paris"})
    # The node got the tools to render with its chat template.
    assert json.loads(request.params.tools)[0]["function"]["name"] == "get_weather"


def test_streamed_tool_call_deltas_accumulate_in_the_sdk(coordinator: Coordinator) -> None:
    holder: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)
        node = threading.Thread(target=_answer_with_a_call, args=(ws, holder))
        node.start()
        stream = _sdk(coordinator).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True  # type: ignore[arg-type]
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in stream:
            for delta_call in chunk.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(delta_call.index, {"name": "", "arguments": ""})
                if delta_call.function and delta_call.function.name:
                    entry["name"] += delta_call.function.name
                if delta_call.function and delta_call.function.arguments:
                    entry["arguments"] += delta_call.function.arguments
            finish = chunk.choices[0].finish_reason or finish
        node.join(10)
    assert calls == {0: {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert finish == "tool_calls"


def test_tool_results_round_trip_to_the_node(coordinator: Coordinator) -> None:
    holder: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)
        node = threading.Thread(target=_answer_with_a_call, args=(ws, holder))
        node.start()
        _sdk(coordinator).chat.completions.create(
            model="m1",
            tools=TOOLS,  # type: ignore[arg-type]
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
            ],
        )
        node.join(10)
    msgs = holder["request"].messages
    assert msgs[1].tool_calls == (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
    assert (msgs[2].role, msgs[2].tool_call_id, msgs[2].content) == ("tool", "call_1", "18C and sunny")


def test_tool_choice_none_sends_no_tools_and_required_needs_a_node_that_can_force(coordinator: Coordinator) -> None:
    base = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)  # an older node, or a model whose tool-call format has no grammar
        resp = coordinator.client.post("/v1/chat/completions", json={**base, "tool_choice": "required"}, headers=coordinator.auth)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "tool_choice"
        assert "cannot be made to call a tool" in resp.json()["error"]["message"]

        holder: dict[str, Any] = {}
        node = threading.Thread(target=_answer_with_a_call, args=(ws, holder))
        node.start()
        coordinator.client.post("/v1/chat/completions", json={**base, "tool_choice": "none"}, headers=coordinator.auth)
        node.join(10)
    assert holder["request"].params.tools is None


def test_malformed_tools_are_a_400_naming_tools(coordinator: Coordinator) -> None:
    body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {}}]}
    resp = coordinator.client.post("/v1/chat/completions", json=body, headers=coordinator.auth)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "tools" and "name" in resp.json()["error"]["message"]


# ---- the same through the Anthropic Messages API and the official anthropic SDK ---------------------

CLAUDE_TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def _claude(coordinator: Coordinator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://testserver", api_key=coordinator.key, http_client=coordinator.client, max_retries=0)


def test_anthropic_tool_use_reaches_the_sdk_whole_and_streamed(coordinator: Coordinator) -> None:
    ask: dict[str, Any] = {"model": "m1", "max_tokens": 64, "tools": CLAUDE_TOOLS, "messages": [{"role": "user", "content": "weather in Paris?"}]}

    def streamed() -> anthropic.types.Message:
        with _claude(coordinator).messages.stream(**ask) as events:
            return events.get_final_message()

    for stream in (False, True):
        msg, request = _asked(coordinator, streamed if stream else lambda: _claude(coordinator).messages.create(**ask))
        assert msg.stop_reason == "tool_use", stream
        text, call = msg.content
        assert (text.type, text.text) == ("text", "Let me check. ")  # type: ignore[union-attr]
        assert (call.type, call.id, call.name, call.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
        assert msg.usage.output_tokens == 14
        # The node got the tools, in the shape its chat template renders.
        (tool,) = json.loads(request.params.tools)
        assert tool["function"]["name"] == "get_weather" and tool["function"]["parameters"] == CLAUDE_TOOLS[0]["input_schema"]


def test_anthropic_tool_use_and_result_blocks_reach_the_node_as_a_tool_turn(coordinator: Coordinator) -> None:
    _, request = _asked(
        coordinator,
        lambda: _claude(coordinator).messages.create(
            model="m1",
            max_tokens=64,
            tools=CLAUDE_TOOLS,  # type: ignore[arg-type]
            messages=[
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C and sunny"}]},
                    {"type": "text", "text": "and tomorrow?"},
                ]},
            ],  # fmt: skip
        ),
    )
    msgs = request.messages
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "user"]
    assert (msgs[1].content, msgs[1].tool_calls) == ("Checking.", (ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),))
    assert (msgs[2].tool_call_id, msgs[2].content) == ("toolu_1", "18C and sunny")
    assert msgs[3].content == "and tomorrow?"


def test_anthropic_forced_tool_choice_and_bad_tools_are_400s(coordinator: Coordinator) -> None:
    base = {"model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "tools": CLAUDE_TOOLS}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)
        for body, param in (
            ({**base, "tool_choice": {"type": "any"}}, "tool_choice"),
            ({**base, "tools": [{"name": "f"}]}, "input_schema"),
            ({**base, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}]}]}, "tool_use"),
            (
                {**base, "messages": [{"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "image", "source": {}}]},
                ]}]},
                "only text is supported in a tool_result",
            ),  # fmt: skip
        ):
            resp = coordinator.client.post("/v1/messages", json=body, headers=coordinator.auth)
            assert resp.status_code == 400 and resp.json()["type"] == "error", resp.text
            assert param in resp.json()["error"]["message"]


def test_parallel_tool_calls_false_gives_the_first_call_only(coordinator: Coordinator) -> None:
    ask: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "weather in three cities?"}], "tools": TOOLS}

    def streamed(**extra: Any) -> list[str]:
        ids: dict[int, str] = {}
        for chunk in _sdk(coordinator).chat.completions.create(**ask, **extra, stream=True):
            for call in chunk.choices[0].delta.tool_calls or []:
                ids[call.index] = ids.get(call.index, "") + (call.id or "")
        return [ids[i] for i in sorted(ids)]

    # As asked by default: every call the model made.
    resp, request = _asked(coordinator, lambda: _sdk(coordinator).chat.completions.create(**ask), _answer_with_three_calls)
    assert [c.id for c in resp.choices[0].message.tool_calls or []] == ["call_1", "call_2", "call_3"]
    assert request.params.parallel_tool_calls is True

    resp, request = _asked(
        coordinator, lambda: _sdk(coordinator).chat.completions.create(**ask, parallel_tool_calls=False), _answer_with_three_calls
    )
    choice = resp.choices[0]
    assert [c.id for c in choice.message.tool_calls or []] == ["call_1"]
    assert (choice.message.content, choice.finish_reason) == ("Checking all three. ", "tool_calls")
    assert request.params.parallel_tool_calls is False  # the node is told too

    ids, _ = _asked(coordinator, lambda: streamed(parallel_tool_calls=False), _answer_with_three_calls)
    assert ids == ["call_1"]


def test_anthropic_disable_parallel_tool_use_gives_one_tool_use_block(coordinator: Coordinator) -> None:
    ask: dict[str, Any] = {
        "model": "m1", "max_tokens": 64, "tools": CLAUDE_TOOLS, "messages": [{"role": "user", "content": "three cities?"}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }  # fmt: skip

    def streamed() -> anthropic.types.Message:
        with _claude(coordinator).messages.stream(**ask) as events:
            return events.get_final_message()

    for ask_it in (lambda: _claude(coordinator).messages.create(**ask), streamed):
        msg, request = _asked(coordinator, ask_it, _answer_with_three_calls)
        assert [b.type for b in msg.content] == ["text", "tool_use"]
        assert msg.content[1].id == "call_1" and msg.stop_reason == "tool_use"  # type: ignore[union-attr]
        assert request.params.parallel_tool_calls is False

    resp = coordinator.client.post(
        "/v1/messages", json={**ask, "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}, headers=coordinator.auth
    )
    assert resp.status_code == 400 and "disable_parallel_tool_use: must be a boolean" in resp.json()["error"]["message"]


# ---- the Responses API ---------------------------------------------------------------------

RESPONSES_TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_responses_function_calls_reach_the_sdk_whole_and_streamed(coordinator: Coordinator) -> None:
    ask: dict[str, Any] = {"model": "m1", "input": "weather in Paris?", "tools": RESPONSES_TOOLS}
    seen: list[Any] = []

    def streamed() -> Any:
        with _sdk(coordinator).responses.stream(**ask) as events:
            seen.extend(events)
            return events.get_final_response()

    for ask_it in (lambda: _sdk(coordinator).responses.create(**ask), streamed):
        resp, request = _asked(coordinator, ask_it)
        message, call = resp.output
        assert (message.type, resp.output_text) == ("message", "Let me check. ")
        assert (call.type, call.call_id, call.name, json.loads(call.arguments)) == ("function_call", "call_1", "get_weather", {"city": "Paris"})
        assert call.status == "completed" and resp.status == "completed"
        assert resp.tools[0].name == "get_weather"  # type: ignore[union-attr]
        # The node got the tools in the chat shape its template renders.
        (tool,) = json.loads(request.params.tools)
        assert tool == {"type": "function", "function": {k: v for k, v in RESPONSES_TOOLS[0].items() if k != "type"}}
    kinds = [e.type for e in seen]
    assert kinds[kinds.index("response.output_item.done") + 1 :][:4] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
    ]  # fmt: skip
    assert [e.sequence_number for e in seen] == list(range(len(seen)))


def test_responses_tool_turn_reaches_the_node_and_parallel_calls_can_be_limited(coordinator: Coordinator) -> None:
    resp, request = _asked(
        coordinator,
        lambda: _sdk(coordinator).responses.create(
            model="m1",
            tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            input=[
                {"role": "user", "content": "weather in three cities?"},
                {"type": "function_call", "call_id": "call_0", "name": "get_weather", "arguments": '{"city":"Lima"}'},
                {"type": "function_call_output", "call_id": "call_0", "output": "21C"},
            ],
        ),
        _answer_with_three_calls,
    )
    msgs = request.messages
    assert [m.role for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1].tool_calls == (ToolCall("call_0", "get_weather", '{"city":"Lima"}'),)
    assert (msgs[2].tool_call_id, msgs[2].content) == ("call_0", "21C")
    assert [o.call_id for o in resp.output if o.type == "function_call"] == ["call_1"]  # one call at most
    assert request.params.parallel_tool_calls is False and resp.parallel_tool_calls is False


def test_responses_tools_other_than_functions_and_forced_choices_are_400s(coordinator: Coordinator) -> None:
    base = {"model": "m1", "input": "hi", "tools": RESPONSES_TOOLS}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws)
        for body, hint in (
            ({**base, "tools": [{"type": "web_search"}]}, "tool type 'web_search' is not supported"),
            ({**base, "tools": [{"type": "function"}]}, "needs a name"),
            ({**base, "tool_choice": "required"}, "cannot be made to call a tool"),
            ({**base, "tool_choice": {"type": "function", "name": "nope"}}, "'nope', which is not one of the tools"),
            ({**base, "tool_choice": {"type": "allowed_tools"}}, "is not supported"),
            ({"model": "m1", "input": "hi", "tool_choice": "auto"}, "only allowed when tools are specified"),
        ):
            resp = coordinator.client.post("/v1/responses", json=body, headers=coordinator.auth)
            assert resp.status_code == 400, resp.text
            assert hint in resp.json()["error"]["message"]


CHAT_ASK = {"model": "m1", "messages": [{"role": "user", "content": "weather?"}], "tools": TOOLS}
CLAUDE_ASK = {"model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "weather?"}], "tools": CLAUDE_TOOLS}
RESPONSES_ASK = {"model": "m1", "input": "weather?", "tools": RESPONSES_TOOLS}
FORCED = [
    ("/v1/chat/completions", {**CHAT_ASK, "tool_choice": "required"}, None),
    ("/v1/chat/completions", {**CHAT_ASK, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "get_weather"),
    ("/v1/responses", {**RESPONSES_ASK, "tool_choice": "required"}, None),
    ("/v1/responses", {**RESPONSES_ASK, "tool_choice": {"type": "function", "name": "get_weather"}}, "get_weather"),
    ("/v1/messages", {**CLAUDE_ASK, "tool_choice": {"type": "any"}}, None),
    ("/v1/messages", {**CLAUDE_ASK, "tool_choice": {"type": "tool", "name": "get_weather"}}, "get_weather"),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body", "name"), FORCED)
def test_a_forced_tool_choice_reaches_a_node_that_can_force_it(
    coordinator: Coordinator, route: str, body: dict[str, Any], name: str | None
) -> None:
    holder: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws, forcing=True)
        node = threading.Thread(target=_answer_with_a_call, args=(ws, holder))
        node.start()
        resp = coordinator.client.post(route, json=body, headers=coordinator.auth)
        node.join(10)
    assert resp.status_code == 200, resp.text
    params = holder["request"].params
    assert (params.tool_required, params.tool_name) == (True, name)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/chat/completions", {**CHAT_ASK, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        ("/v1/messages", {**CLAUDE_ASK, "tool_choice": {"type": "tool", "name": "nope"}}),
    ],
)
def test_forcing_a_tool_that_was_not_given_is_a_400(coordinator: Coordinator, route: str, body: dict[str, Any]) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _tool_node(ws, forcing=True)
        resp = coordinator.client.post(route, json=body, headers=coordinator.auth)
    assert resp.status_code == 400 and "'nope'" in resp.text and "tool_choice" in resp.text
