"""A forced tool call on the node (``tool_required``): the answer is calls in the model's format and nothing else.

The tiny random model renders tools in the common JSON format
(``<tool_call>{"name", "arguments"}</tool_call>``) but left alone never
writes a call; forced, every answer must be calls to the request's tools
with arguments that match their parameters.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from darkbloom.node.engine.base import Failed
from darkbloom.node.engine.constrain import tool_call_grammar
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.protocol import ToolCall
from tests.node.test_engine import Outcome, generate

pytestmark = pytest.mark.anyio

TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}}, "required": ["city"], "additionalProperties": False,
    }}},
    {"type": "function", "function": {"name": "clock", "parameters": {
        "type": "object", "properties": {"zone": {"$ref": "#/$defs/zone"}}, "required": ["zone"], "additionalProperties": False,
        "$defs": {"zone": {"enum": ["UTC", "CET"]}},
    }}},
]  # fmt: skip
ARGS = {"weather": ({"city": "Paris"}, {"city": "Rome"}), "clock": ({"zone": "UTC"}, {"zone": "CET"})}


def calls(out: Outcome) -> list[ToolCall]:
    return [c for d in out.deltas for c in d.tool_calls]


async def forced(engine: MLXEngine, seed: int, max_tokens: int = 120, **params: Any) -> Outcome:
    return await generate(
        engine, "what now?", temperature=1.0, seed=seed, max_tokens=max_tokens, tools=json.dumps(TOOLS),
        tool_required=True, **params,
    )  # fmt: skip


async def test_left_alone_the_tiny_model_calls_nothing(engine: MLXEngine) -> None:
    out = await generate(engine, "what now?", temperature=1.0, seed=1, max_tokens=120, tools=json.dumps(TOOLS))
    assert not calls(out) and out.finished.finish_reason != "tool_calls"


@pytest.mark.parametrize("seed", range(4))
async def test_a_required_call_is_one_call_to_a_tool_and_nothing_else(engine: MLXEngine, seed: int) -> None:
    out = await forced(engine, seed, parallel_tool_calls=False)
    made = calls(out)
    assert len(made) == 1 and out.finished.finish_reason == "tool_calls", out.text
    assert not out.text.strip()  # nothing around the call
    assert json.loads(made[0].arguments) in ARGS[made[0].name]


async def test_with_parallel_calls_every_call_is_well_formed(engine: MLXEngine) -> None:
    # The random model keeps calling (it rarely samples the end of its turn) until max_tokens cuts it.
    out = await forced(engine, 0, max_tokens=400)
    made = calls(out)
    assert len(made) > 1
    for call in made:
        assert json.loads(call.arguments) in ARGS[call.name]


@pytest.mark.parametrize("seed", range(3))
async def test_a_named_tool_is_the_one_called(engine: MLXEngine, seed: int) -> None:
    out = await forced(engine, seed, tool_name="clock")
    assert calls(out) and {c.name for c in calls(out)} == {"clock"}


async def test_a_tool_name_not_among_the_tools_is_a_400(engine: MLXEngine) -> None:
    out = await forced(engine, 0, tool_name="nope")
    assert isinstance(out.end, Failed) and out.end.status == 400 and out.end.code == "invalid_tool_choice"
    assert "nope" in out.end.message


async def test_parameters_with_draft_7_definitions_are_forced_too(engine: MLXEngine) -> None:
    clock = {"type": "function", "function": {"name": "clock", "parameters": {
        "type": "object", "properties": {"zone": {"$ref": "#/definitions/zone"}}, "required": ["zone"],
        "additionalProperties": False, "definitions": {"zone": {"enum": ["UTC", "CET"]}},
    }}}  # fmt: skip
    out = await generate(
        engine, "what now?", temperature=1.0, seed=3, max_tokens=120, tools=json.dumps([clock]), tool_required=True,
        parallel_tool_calls=False,
    )  # fmt: skip
    (call,) = calls(out)
    assert json.loads(call.arguments) in ARGS["clock"]


def test_a_format_without_a_grammar_cannot_be_forced() -> None:
    mistral = SimpleNamespace(tool_parser=SimpleNamespace(__module__="mlx_lm.tool_parsers.mistral"))
    with pytest.raises(ValueError, match="mistral"):
        tool_call_grammar(mistral, None, TOOLS, None, True)
