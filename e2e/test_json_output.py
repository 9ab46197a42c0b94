"""Structured output end to end: the openai SDK's own parse helpers against a coordinator and a real node.

The node runs the tiny random model, which left alone writes noise: the
answers parse into the caller's pydantic model only because the node
constrains decoding to the schema the SDK sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

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
