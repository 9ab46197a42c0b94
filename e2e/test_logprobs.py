"""Token log probabilities end to end: the openai SDK against a coordinator and a real node.

Greedy decoding picks the likeliest token, so each reported token must be
its own first alternative; and the entries account for every token billed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import openai
import pytest

from e2e.conftest import Network

ASK = [{"role": "user", "content": "what is the capital of france?"}]


@pytest.fixture(scope="module")
def oai(shared_network: Network) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{shared_network.base_url}/v1", api_key=shared_network.key, max_retries=0) as client:
        yield client


def test_a_greedy_answer_reports_every_token_and_its_alternatives(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.chat.completions.create(
        model=shared_network.model, messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3  # type: ignore[arg-type]
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "length" and choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert resp.usage is not None and len(content) == resp.usage.completion_tokens == 10
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token
        assert entry.logprob <= 0 and math.isclose(entry.logprob, entry.top_logprobs[0].logprob)


def test_a_stream_reports_the_same_tokens(shared_network: Network, oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(
        model=shared_network.model, messages=ASK, max_tokens=10, temperature=0, logprobs=True  # type: ignore[arg-type]
    )
    stream = oai.chat.completions.create(
        model=shared_network.model, messages=ASK, max_tokens=10, temperature=0, logprobs=True, stream=True  # type: ignore[arg-type]
    )
    streamed = [c for ch in stream if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content or []]
    assert whole.choices[0].logprobs is not None
    assert [(c.token, round(c.logprob, 4)) for c in streamed] == [
        (c.token, round(c.logprob, 4)) for c in whole.choices[0].logprobs.content or []
    ]


def test_a_legacy_completion_lists_the_tokens_of_its_text(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.completions.create(model=shared_network.model, prompt="the quick brown fox", max_tokens=8, temperature=0, logprobs=2)
    choice = resp.choices[0]
    lp = choice.logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
    assert resp.usage is not None and len(lp.tokens) == resp.usage.completion_tokens == 8
    # The tokens spell the text, but for a character split across tokens: each part shows as U+FFFD.
    assert "".join(lp.tokens).replace("\ufffd", "") == choice.text.replace("\ufffd", "")
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    # Greedy: the chosen token is the likeliest (two alternatives that read the same share one key).
    assert all(1 <= len(top) <= 2 and max(top.values()) == p for top, p in zip(lp.top_logprobs, lp.token_logprobs))


def test_a_response_includes_its_output_text_logprobs(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.responses.create(
        model=shared_network.model, input="what is the capital of france?", max_output_tokens=10, temperature=0,
        include=["message.output_text.logprobs"], top_logprobs=2,
    )  # fmt: skip
    part = resp.output[0].content[0]  # type: ignore[union-attr]
    assert resp.usage is not None and len(part.logprobs) == resp.usage.output_tokens == 10  # type: ignore[union-attr]
    assert all(e.top_logprobs[0].token == e.token for e in part.logprobs)  # type: ignore[union-attr]
