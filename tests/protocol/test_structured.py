"""JSON output options on chat and Responses: what reaches the node, and the 400s for what cannot be enforced."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.protocol import structured
from darkbloom.protocol.openai import RequestError, parse_chat_request, to_internal
from darkbloom.protocol.anthropic import parse_messages_request
from darkbloom.protocol.openai_responses import ResponseState, parse_responses_request

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
HUGE = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(2000)}}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def chat(**extra: Any) -> Any:
    body = {"model": "m", "messages": [{"role": "user", "content": "answer in JSON"}], **extra}
    return to_internal(parse_chat_request(json.dumps(body).encode()))[1]


def responses(**extra: Any) -> Any:
    return parse_responses_request(json.dumps({"model": "m", "input": "answer in JSON", **extra}).encode())


def test_chat_json_schema_reaches_the_node_as_the_schema_text() -> None:
    p = chat(response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}})
    assert p.response_format == "json_schema" and json.loads(p.json_schema) == SCHEMA


def test_chat_json_object_and_text() -> None:
    p = chat(response_format={"type": "json_object"})
    assert (p.response_format, p.json_schema) == ("json_object", None)
    p = chat(response_format={"type": "text"})
    assert (p.response_format, p.json_schema) == (None, None)


def test_a_json_schema_without_a_schema_means_any_json() -> None:
    assert chat(response_format={"type": "json_schema", "json_schema": {"name": "any"}}).json_schema == "{}"


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ({"type": "json_schema"}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "has space", "schema": SCHEMA}}, "name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": HUGE}}, "too large"),
        ({"type": "xml"}, "'xml'"),
    ],
)
def test_a_malformed_format_is_a_400_naming_response_format(fmt: dict[str, Any], needle: str) -> None:
    with pytest.raises(RequestError) as err:
        chat(response_format=fmt)
    assert err.value.status == 400 and err.value.param == "response_format" and needle in str(err.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("schema", "needle"),
    [({"type": "objekt"}, "objekt"), ({"$ref": "#/nowhere"}, "nowhere"), ({"type": "string", "format": "shoe"}, "shoe")],
)
async def test_a_schema_the_compiler_refuses_is_a_400_with_its_reason(schema: dict[str, Any], needle: str) -> None:
    with pytest.raises(RequestError) as err:
        await structured.check_schema(json.dumps(schema), "response_format")
    assert err.value.status == 400 and err.value.param == "response_format" and needle in str(err.value)
    await structured.check_schema(json.dumps(SCHEMA), "response_format")  # a good one passes


def test_a_json_schema_field_of_the_wrong_shape_is_a_400() -> None:
    with pytest.raises(RequestError) as err:
        chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}})
    assert err.value.status == 400 and "schema" in str(err.value)


def test_json_output_and_callable_tools_do_not_mix() -> None:
    with pytest.raises(RequestError) as err:
        chat(response_format={"type": "json_object"}, tools=TOOLS)
    assert err.value.param == "response_format" and "tools" in str(err.value)
    p = chat(response_format={"type": "json_object"}, tools=TOOLS, tool_choice="none")
    assert p.response_format == "json_object" and p.tools is None


def test_responses_text_format_json_schema_reaches_the_node_and_is_echoed() -> None:
    fmt = {"type": "json_schema", "name": "place", "schema": SCHEMA, "strict": True}
    req, _, p = responses(text={"format": fmt})
    assert p.response_format == "json_schema" and json.loads(p.json_schema) == SCHEMA
    echoed = ResponseState("resp_1", "msg_1", "m", 0, req).body()["text"]["format"]
    assert echoed == {"type": "json_schema", "name": "place", "description": None, "schema": SCHEMA, "strict": True}


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [({"type": "json_schema", "schema": SCHEMA}, "name"), ({"type": "json_schema", "name": "x", "schema": HUGE}, "too large"), ({"type": "yaml"}, "yaml")],
)
def test_responses_text_format_refusals_name_text_format(fmt: dict[str, Any], needle: str) -> None:
    with pytest.raises(RequestError) as err:
        responses(text={"format": fmt})
    assert err.value.status == 400 and err.value.param == "text.format" and needle in str(err.value)


def test_responses_json_object_and_tools() -> None:
    assert responses(text={"format": {"type": "json_object"}})[2].response_format == "json_object"
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    with pytest.raises(RequestError) as err:
        responses(text={"format": {"type": "json_object"}}, tools=tools)
    assert err.value.param == "text.format"


def messages(**extra: Any) -> Any:
    body = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "where?"}], **extra}
    return parse_messages_request(json.dumps(body).encode())[2]


def test_anthropic_output_config_format_reaches_the_node_as_the_schema() -> None:
    p = messages(output_config={"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"})
    assert p.response_format == "json_schema" and json.loads(p.json_schema) == SCHEMA
    p = messages(output_format={"type": "json_schema", "schema": SCHEMA})  # the beta's spelling
    assert p.response_format == "json_schema" and json.loads(p.json_schema) == SCHEMA
    assert messages(output_config={"effort": "high"}).response_format is None  # effort alone: nothing to enforce


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"output_config": {"format": {"type": "text"}}}, "'text' is not supported"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "schema is required"),
        ({"output_config": {"format": {"type": "json_schema", "schema": HUGE}}}, "too large"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
             "tools": [{"name": "f", "input_schema": {"type": "object"}}]},
            "tools",
        ),
        (
            {"output_format": {"type": "json_schema", "schema": SCHEMA},
             "messages": [{"role": "user", "content": "where?"}, {"role": "assistant", "content": "{"}]},
            "prefill",
        ),
    ],
)  # fmt: skip
def test_anthropic_structured_output_refusals_name_the_field(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(RequestError) as err:
        messages(**extra)
    assert err.value.status == 400 and err.value.param in ("output_config.format", "output_format")
    assert needle in str(err.value)
