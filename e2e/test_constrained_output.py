"""Constrained output end to end: JSON schemas and forced tool calls, through the openai and anthropic SDKs.

The node runs the tiny random model, which left alone writes noise and
never calls a tool: the answers parse into the caller's pydantic model, and
the forced calls name the right tool with arguments that match its schema,
only because the node constrains decoding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from e2e.conftest import Network


class Verdict(BaseModel):
    ok: bool
    n: int = Field(ge=0, le=9)
    color: Literal["red", "green"]


@pytest.fixture(scope="module")
def oai(shared_network: Network) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{shared_network.base_url}/v1", api_key=shared_network.key, max_retries=0) as client:
        yield client


def test_chat_parse_returns_the_callers_model(shared_network: Network, oai: openai.OpenAI) -> None:
    for seed in (1, 2, 3):
        done = oai.chat.completions.parse(
            model=shared_network.model, messages=[{"role": "user", "content": "judge this"}],
            response_format=Verdict, max_tokens=200, temperature=1, seed=seed,
        )  # fmt: skip
        choice = done.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Verdict), choice.message.content


def test_a_streamed_json_answer_is_whole_json(shared_network: Network, oai: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    stream = oai.chat.completions.create(
        model=shared_network.model, messages=[{"role": "user", "content": "judge this"}], max_tokens=100,
        temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}},
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert set(json.loads(text)) == {"ok"}


def test_responses_parse_returns_the_callers_model(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.responses.parse(
        model=shared_network.model, input="judge this", text_format=Verdict, max_output_tokens=200, temperature=0
    )
    assert resp.status == "completed" and isinstance(resp.output_parsed, Verdict)
    fmt = resp.text.format if resp.text else None
    assert fmt is not None and fmt.type == "json_schema" and fmt.name == "Verdict"


def test_a_schema_the_network_cannot_enforce_is_a_400_before_anything_runs(
    shared_network: Network, oai: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=shared_network.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "tuple"}}},
        )  # fmt: skip
    assert err.value.body["param"] == "response_format" and "tuple" in err.value.body["message"]  # type: ignore[index]


class Flag(BaseModel):
    ok: bool
    color: Literal["red", "green"]


def test_anthropic_parse_returns_the_callers_model(shared_network: Network) -> None:
    # (The anthropic SDK moves numeric bounds out of the schema it sends, and checks them itself: none here.)
    with anthropic.Anthropic(base_url=shared_network.base_url, api_key=shared_network.key, max_retries=0) as claude:
        for temperature in (0, 1, 1):
            msg = claude.messages.parse(
                model=shared_network.model, max_tokens=200, messages=[{"role": "user", "content": "judge this"}],
                output_format=Flag, extra_body={"temperature": temperature},
            )  # fmt: skip
            assert msg.stop_reason == "end_turn" and isinstance(msg.parsed_output, Flag), msg.content


# ---- forced tool calls ----------------------------------------------------------------------------

CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": False}


def test_chat_named_tool_choice_calls_that_tool(shared_network: Network, oai: openai.OpenAI) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "weather", "parameters": CITY}},
        {"type": "function", "function": {"name": "news", "parameters": CITY}},
    ]
    for seed in (1, 2):
        done = oai.chat.completions.create(
            model=shared_network.model, messages=[{"role": "user", "content": "weather in Rome?"}], tools=tools,
            tool_choice={"type": "function", "function": {"name": "news"}}, parallel_tool_calls=False,
            max_tokens=120, temperature=1, seed=seed,
        )  # fmt: skip
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice.message.content
        (call,) = choice.message.tool_calls
        assert call.function.name == "news" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_anthropic_tool_choice_tool_gives_a_tool_use_block(shared_network: Network) -> None:
    with anthropic.Anthropic(base_url=shared_network.base_url, api_key=shared_network.key, max_retries=0) as claude:
        msg = claude.messages.create(
            model=shared_network.model, max_tokens=120, messages=[{"role": "user", "content": "weather in Rome?"}],
            tools=[{"name": "weather", "description": "Weather", "input_schema": CITY}],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            extra_body={"temperature": 0},
        )  # fmt: skip
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.name == "weather" and use.input in ({"city": "Paris"}, {"city": "Rome"})  # type: ignore[union-attr]
