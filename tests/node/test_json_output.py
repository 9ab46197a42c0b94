"""JSON output on the node: decoding constrained to a schema, on the tiny random model.

A random model left alone writes noise; every answer below has to parse and
match its schema anyway, which only the constraint can make true.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from darkbloom.node.engine.base import Failed
from darkbloom.node.engine.constrain import can_constrain
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.node.models.local import describe
from tests.node.test_engine import GREEDY, collect, generate, submit

pytestmark = pytest.mark.anyio

VERDICT = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
        "color": {"enum": ["red", "green"]},
    },
    "required": ["ok", "n", "color"],
    "additionalProperties": False,
}
"""A schema whose every answer is short: the random model cannot wander off into a long string."""

AS_VERDICT = {"response_format": "json_schema", "json_schema": json.dumps(VERDICT)}


def assert_verdict(text: str) -> None:
    value = json.loads(text)
    assert set(value) == {"ok", "n", "color"}, value
    assert isinstance(value["ok"], bool) and value["n"] in range(10) and value["color"] in ("red", "green"), value


async def test_the_tiny_model_left_alone_does_not_write_json(engine: MLXEngine) -> None:
    out = await generate(engine, "answer in json", **{**GREEDY, "max_tokens": 60})
    with pytest.raises(ValueError):
        json.loads(out.text)


async def test_a_greedy_answer_matches_its_schema_and_ends_there(engine: MLXEngine) -> None:
    out = await generate(engine, "answer in json", temperature=0.0, max_tokens=200, **AS_VERDICT)
    assert_verdict(out.text)
    assert out.finished.finish_reason == "stop"  # the closing brace left only end-of-sequence
    assert sum(d.tokens for d in out.deltas) == out.finished.usage.completion_tokens


@pytest.mark.parametrize("seed", range(5))
async def test_sampled_answers_match_their_schema(engine: MLXEngine, seed: int) -> None:
    out = await generate(engine, "answer in json", temperature=1.0, seed=seed, max_tokens=200, **AS_VERDICT)
    assert_verdict(out.text)


async def test_json_object_mode_opens_an_object(engine: MLXEngine) -> None:
    out = await generate(engine, "answer in json", temperature=0.0, max_tokens=30, response_format="json_object")
    assert out.text.startswith("{")  # the random model then writes a long key: cut by max_tokens


async def test_a_constrained_request_leaves_its_batch_mates_alone(engine: MLXEngine) -> None:
    alone = await generate(engine, "hello", **GREEDY)
    plain = submit(engine, "hello", **GREEDY)
    constrained = submit(engine, "answer in json", temperature=0.0, max_tokens=200, **AS_VERDICT)
    assert (await collect(*plain)).key() == alone.key()
    assert_verdict((await collect(*constrained)).text)


async def test_a_schema_the_grammar_compiler_refuses_fails_with_400(engine: MLXEngine) -> None:
    # The coordinator checks schemas; a sealed request's schema is only seen here.
    out = await generate(engine, "hi", max_tokens=5, response_format="json_schema", json_schema='{"type": "objectx"}')
    assert isinstance(out.end, Failed) and out.end.status == 400 and out.end.code == "invalid_json_schema"
    assert "objectx" in out.end.message
    assert_verdict((await generate(engine, "answer in json", temperature=0.0, max_tokens=200, **AS_VERDICT)).text)


async def test_a_schema_too_large_to_compile_between_steps_is_a_400(engine: MLXEngine) -> None:
    huge = json.dumps({"type": "object", "properties": {f"p{i}": {"description": "x" * 100} for i in range(2000)}})
    out = await generate(engine, "hi", max_tokens=5, response_format="json_schema", json_schema=huge)
    assert isinstance(out.end, Failed) and out.end.status == 400 and "at most" in out.end.message


def test_a_node_advertises_json_only_with_a_fast_tokenizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert describe(tiny_model_dir)[0].supports_json
    slow = shutil.copytree(tiny_model_dir, tmp_path / "slow")
    (slow / "tokenizer.json").unlink()  # llguidance reads the vocabulary from a fast tokenizer's file
    assert can_constrain(tiny_model_dir) and not can_constrain(slow)


def test_a_token_outside_the_grammar_ends_the_answer_and_is_reported(engine: MLXEngine) -> None:
    import mlx.core as mx

    from darkbloom.node.engine.constrain import GrammarConstraint
    from darkbloom.protocol.structured import grammar

    gt = engine._grammar_tok
    c = GrammarConstraint(gt, engine._matchers.matcher(grammar(json.dumps(VERDICT))))
    vocab = engine._model.args.vocab_size
    first = c(mx.array([0]), mx.zeros((1, vocab)))
    assert mx.isfinite(first).sum().item() >= 1 and not c.error
    stray = engine._tok.encode("x", add_special_tokens=False)[0]  # an answer must open with "{"
    after = c(mx.array([0, stray]), mx.zeros((1, vocab)))
    assert c.error
    assert mx.isfinite(after).sum().item() == 1 and mx.isfinite(after[0, gt.eos_token]).item()  # only the end is left


async def test_a_schema_sent_again_is_compiled_once(engine: MLXEngine) -> None:
    schema = {**VERDICT, "description": "compiled once"}
    before = engine._matchers.compiled
    for seed in range(3):
        out = await generate(engine, "answer in json", temperature=1.0, seed=seed, max_tokens=200,
                             response_format="json_schema", json_schema=json.dumps(schema))  # fmt: skip
        assert_verdict(out.text)  # each request gets a fresh copy: its own state from the start
    assert engine._matchers.compiled == before + 1
    bad = '{"type": "objectx"}'
    for _ in range(2):
        await generate(engine, "hi", max_tokens=5, response_format="json_schema", json_schema=bad)
    assert engine._matchers.compiled == before + 3  # a grammar that fails is not kept
