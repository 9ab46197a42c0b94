"""Token log probabilities on the node, checked against mlx-lm run directly on the same model (the oracle)."""

from __future__ import annotations

import pytest

from darkbloom.node.engine.mlx_engine import MLXEngine, template_messages
from darkbloom.protocol import ChatMessage
from tests.node.test_engine import collect, generate, submit

pytestmark = pytest.mark.anyio


def oracle(engine: MLXEngine, prompt: str, n: int, k: int) -> list[tuple[int, float, list[int]]]:
    """Greedy (token, its logprob, the k likeliest ids) straight from mlx-lm's ``generate_step``."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    tok = engine._tok
    ids = tok.apply_chat_template(template_messages((ChatMessage(role="user", content=prompt),)), add_generation_prompt=True)
    out = []
    for (token, logprobs), _ in zip(generate_step(mx.array(ids), engine._model), range(n)):
        order = sorted(range(logprobs.shape[0]), key=lambda i: -logprobs[i].item())[:k]
        out.append((int(token), logprobs[int(token)].item(), order))
    return out


async def test_each_token_s_logprob_and_alternatives_are_mlx_lm_s(engine: MLXEngine) -> None:
    out = await generate(engine, "hello", temperature=0.0, max_tokens=8, top_logprobs=3)
    got = [lp for d in out.deltas for lp in d.logprobs]
    want = oracle(engine, "hello", 8, 3)
    assert out.finished.finish_reason == "length" and len(got) == out.finished.usage.completion_tokens == 8
    for entry, (token, logprob, top) in zip(got, want):
        assert entry.logprob == pytest.approx(logprob, abs=1e-4)
        assert [a.token for a in entry.top] == [engine._tok.decode([i]) for i in top]
        assert entry.top[0].token == entry.token  # greedy picks the likeliest
        assert entry.top[0].logprob >= entry.top[1].logprob >= entry.top[2].logprob
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token


async def test_batch_mates_asking_for_different_counts_each_get_their_own(engine: MLXEngine) -> None:
    alone = await generate(engine, "hello", temperature=0.0, max_tokens=6, top_logprobs=4)
    many = [submit(engine, "hello", temperature=0.0, max_tokens=6, top_logprobs=k) for k in (1, 4)]
    many.append(submit(engine, "hello", temperature=0.0, max_tokens=6))
    one, four, none = [await collect(*s) for s in many]
    assert [len(e.top) for d in one.deltas for e in d.logprobs] == [1] * 6
    assert [e for d in four.deltas for e in d.logprobs] == [e for d in alone.deltas for e in d.logprobs]
    assert not any(d.logprobs for d in none.deltas)


async def test_no_logprobs_unless_asked_and_none_but_the_token_at_zero(engine: MLXEngine) -> None:
    plain = await generate(engine, "hello", temperature=0.0, max_tokens=6)
    assert all(not d.logprobs for d in plain.deltas)
    bare = await generate(engine, "hello", temperature=0.0, max_tokens=6, top_logprobs=0)
    entries = [lp for d in bare.deltas for lp in d.logprobs]
    assert len(entries) == 6 and all(e.top == () and e.logprob <= 0 for e in entries)
    assert bare.key() == plain.key()  # asking for them changes nothing else


async def test_a_token_the_json_constraint_rules_out_reports_minus_9999(engine: MLXEngine) -> None:
    out = await generate(
        engine, "hi", temperature=0.0, max_tokens=1, top_logprobs=20, response_format="json_object"
    )
    (entry,) = [lp for d in out.deltas for lp in d.logprobs]
    assert entry.token == "{" or entry.token.startswith("{")
    assert entry.top[-1].logprob == -9999.0  # far fewer than 20 tokens can open a JSON object
