"""MLXEngine on a tiny random model: batching is invisible, accounting is exact, every request ends.

The oracle (after mlx-lm's ``test_batch_matches_single``): with greedy or
seeded sampling, a request's output must not depend on what else shares its
batch, nor on when it joined.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from darkbloom.node.engine.base import EngineEvent, Failed, Finished, TextDelta
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.protocol import ChatMessage, SamplingParams

pytestmark = pytest.mark.anyio

PROMPTS = [
    "hello",
    "what is the capital of france?",
    "one two three four five six seven eight nine ten",
    "the quick brown fox jumps over the lazy dog. " * 6,
    "darkbloom is a private inference network",
    "tool function arguments",
]
"""Different lengths on purpose: batched prompts are padded, and padding must not change the answer."""

_ids = itertools.count()


@dataclass
class Outcome:
    deltas: list[TextDelta]
    end: Finished | Failed

    @property
    def text(self) -> str:
        return "".join(d.text for d in self.deltas)

    @property
    def finished(self) -> Finished:
        assert isinstance(self.end, Finished), self.end
        return self.end

    def key(self) -> tuple[str, int, int, str]:
        """What must not change with batching: text, token counts, and why it ended."""
        f = self.finished
        return self.text, f.usage.prompt_tokens, f.usage.completion_tokens, f.finish_reason


def submit(engine: MLXEngine, prompt: str, **params: Any) -> tuple[str, asyncio.Queue[EngineEvent]]:
    request_id = f"req-{next(_ids)}"
    events: asyncio.Queue[EngineEvent] = asyncio.Queue()
    engine.submit(request_id, (ChatMessage(role="user", content=prompt),), SamplingParams(**params), events)
    return request_id, events


async def first_delta(events: asyncio.Queue[EngineEvent]) -> TextDelta:
    with anyio.fail_after(10):
        ev = await events.get()
    assert isinstance(ev, TextDelta), ev
    return ev


async def collect(
    request_id: str, events: asyncio.Queue[EngineEvent], timeout: float = 20, seen: tuple[TextDelta, ...] = ()
) -> Outcome:
    """Read a request's events up to its terminal one; ``seen`` are deltas already taken off the queue."""
    deltas = list(seen)
    with anyio.fail_after(timeout):
        while True:
            ev = await events.get()
            assert ev.request_id == request_id
            if isinstance(ev, TextDelta):
                deltas.append(ev)
                continue
            await anyio.sleep(0.01)
            assert events.empty(), "events after the terminal one"
            return Outcome(deltas, ev)


async def generate(engine: MLXEngine, prompt: str, **params: Any) -> Outcome:
    return await collect(*submit(engine, prompt, **params))


GREEDY = {"temperature": 0.0, "max_tokens": 40}
SEEDED = {"temperature": 1.0, "seed": 7, "max_tokens": 32}


async def test_concurrent_greedy_requests_match_each_alone(engine: MLXEngine) -> None:
    alone = [(await generate(engine, p, **GREEDY)).key() for p in PROMPTS]
    assert len({text for text, *_ in alone}) == len(PROMPTS), "the tiny model should answer each prompt differently"

    submitted = [submit(engine, p, **GREEDY) for p in PROMPTS]
    head = await first_delta(submitted[0][1])
    assert engine.capacity().num_running > 1, "the requests should share a batch"
    together = [(await collect(*s, seen=(head,) if i == 0 else ())).key() for i, s in enumerate(submitted)]
    assert together == alone


async def test_requests_joining_a_running_batch_match_each_alone(engine: MLXEngine) -> None:
    alone = [(await generate(engine, p, **GREEDY)).key() for p in PROMPTS]

    first = [submit(engine, p, **GREEDY) for p in PROMPTS[:3]]
    head = await first_delta(first[0][1])  # the batch is decoding: now the rest join it
    rest = [submit(engine, p, **GREEDY) for p in PROMPTS[3:]]
    joined = [(await collect(*s, seen=(head,) if i == 0 else ())).key() for i, s in enumerate(first + rest)]
    assert joined == alone


async def test_completion_tokens_equal_the_sum_of_delta_tokens(engine: MLXEngine) -> None:
    for prompt in PROMPTS:
        out = await generate(engine, prompt, **GREEDY)
        assert out.finished.usage.completion_tokens == sum(d.tokens for d in out.deltas)
        assert all(d.tokens >= 1 for d in out.deltas)


@pytest.mark.parametrize("max_tokens", [1, 5, 17])
async def test_max_tokens_is_respected_with_finish_reason_length(engine: MLXEngine, max_tokens: int) -> None:
    out = await generate(engine, "one two three", temperature=0.0, max_tokens=max_tokens)
    assert out.finished.finish_reason == "length"
    assert out.finished.usage.completion_tokens == max_tokens
    assert out.finished.usage.prompt_tokens > 0


async def test_cancel_mid_stream_ends_quickly_and_the_engine_keeps_serving(engine: MLXEngine) -> None:
    max_tokens = 1500
    request_id, events = submit(engine, "hello", temperature=0.0, max_tokens=max_tokens)
    head = await first_delta(events)

    started = time.perf_counter()
    engine.cancel(request_id)
    out = await collect(request_id, events, timeout=5, seen=(head,))
    assert time.perf_counter() - started < 2
    assert out.finished.finish_reason == "cancelled"
    assert out.finished.usage.completion_tokens < max_tokens
    assert out.finished.usage.completion_tokens == sum(d.tokens for d in out.deltas)
    assert engine.capacity().num_running == 0

    engine.cancel(request_id)  # cancelling a finished request is harmless
    after = await generate(engine, "hello", temperature=0.0, max_tokens=4)
    assert (after.finished.finish_reason, after.finished.usage.completion_tokens) == ("length", 4)


async def test_cancel_one_request_leaves_its_batch_mates_untouched(engine: MLXEngine) -> None:
    alone = [(await generate(engine, p, **GREEDY)).key() for p in PROMPTS[:3]]
    victim = submit(engine, "the lazy dog", temperature=0.0, max_tokens=1500)
    others = [submit(engine, p, **GREEDY) for p in PROMPTS[:3]]
    await first_delta(victim[1])
    engine.cancel(victim[0])
    assert (await collect(*victim)).finished.finish_reason == "cancelled"
    assert [(await collect(*s)).key() for s in others] == alone


async def test_prompt_longer_than_context_fails_with_400_and_engine_keeps_serving(engine: MLXEngine) -> None:
    out = await generate(engine, "hello world " * 1200, temperature=0.0, max_tokens=8)
    assert isinstance(out.end, Failed)
    assert (out.end.code, out.end.status) == ("context_length_exceeded", 400)
    assert str(engine.context_length) in out.end.message
    assert out.deltas == []

    after = await generate(engine, "hello", temperature=0.0, max_tokens=4)
    assert after.finished.usage.completion_tokens == 4


async def test_stop_string_ends_generation_without_the_stop_text(engine: MLXEngine) -> None:
    prompt = "what is the capital of france?"
    full = await generate(engine, prompt, temperature=0.0, max_tokens=60)
    # A stop string taken from the middle of the greedy answer, so it surely occurs.
    start = next(
        i for i in range(8, len(full.text) - 3) if all(c.isascii() and c.isalnum() for c in full.text[i : i + 3])
    )
    stop = full.text[start : start + 3]
    expected = full.text[: full.text.find(stop)]

    out = await generate(engine, prompt, temperature=0.0, max_tokens=60, stop=(stop, "never appears"))
    assert out.finished.finish_reason == "stop"
    assert out.text == expected
    assert stop not in out.text
    assert out.finished.usage.completion_tokens < full.finished.usage.completion_tokens
    assert out.finished.usage.completion_tokens == sum(d.tokens for d in out.deltas)


async def test_seeded_sampling_repeats_alone_and_alongside_other_requests(engine: MLXEngine) -> None:
    first = (await generate(engine, "hello", **SEEDED)).key()
    assert (await generate(engine, "hello", **SEEDED)).key() == first

    crowd = [
        submit(engine, "one two three", temperature=1.0, max_tokens=24),
        submit(engine, "hello", **{**SEEDED, "seed": 8}),
        submit(engine, "the quick brown fox", temperature=0.0, max_tokens=24),
    ]
    seeded = submit(engine, "hello", **SEEDED)
    crowd.append(submit(engine, "hello", temperature=1.0, max_tokens=40))
    assert (await collect(*seeded)).key() == first
    other_seed = [await collect(*s) for s in crowd][1]
    assert other_seed.text != first[0], "a different seed should sample differently"


async def test_stop_string_at_the_very_start_still_accounts_every_token(engine: MLXEngine) -> None:
    prompt = "what is the capital of france?"
    full = await generate(engine, prompt, temperature=0.0, max_tokens=20)
    out = await generate(engine, prompt, temperature=0.0, max_tokens=20, stop=(full.text[:2],))
    assert out.finished.finish_reason == "stop"
    assert out.text == ""
    assert out.finished.usage.completion_tokens >= 1
    assert out.finished.usage.completion_tokens == sum(d.tokens for d in out.deltas)


async def test_a_raw_prompt_continuation_keeps_its_leading_space(engine: MLXEngine, tiny_model_dir: Path) -> None:
    """Legacy completions continue the prompt's text: prompt + answer reads as the model's whole text."""
    import mlx_lm

    model, tok = mlx_lm.load(str(tiny_model_dir))
    spaced = 0
    for prompt in PROMPTS[:3] + ["one two three", "once upon a time"]:
        ids = tok.encode(prompt)
        tokens = [r.token for r in mlx_lm.stream_generate(model, tok, ids, max_tokens=8)]
        expected = tok.decode(ids + tokens, skip_special_tokens=True)[len(tok.decode(ids, skip_special_tokens=True)) :]
        spaced += expected.startswith(" ")
        assert (await generate(engine, "", temperature=0.0, max_tokens=8, raw_prompt=prompt)).text == expected
    assert spaced, "no prompt here continues with a space: the test checks nothing"


async def test_count_only_reports_the_prompt_and_generates_nothing(engine: MLXEngine) -> None:
    counted = await generate(engine, "what is the capital of france?", max_tokens=1, count_only=True)
    answered = await generate(engine, "what is the capital of france?", temperature=0.0, max_tokens=1)
    assert counted.deltas == [] and counted.finished.usage.completion_tokens == 0
    assert counted.finished.usage.prompt_tokens == answered.finished.usage.prompt_tokens


async def test_a_prefilled_answer_is_continued_not_answered_anew(engine: MLXEngine) -> None:
    prompt, prefix = "what is the capital of france?", "The capital of France is"
    chatml = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{prefix}"  # the tiny model's template

    async def answer(continue_final: bool) -> Outcome:
        request_id = f"req-{next(_ids)}"
        events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        messages = (ChatMessage(role="user", content=prompt), ChatMessage(role="assistant", content=prefix))
        engine.submit(request_id, messages, SamplingParams(temperature=0.0, max_tokens=24, continue_final=continue_final), events)
        return await collect(request_id, events)

    # The model sees its answer begun and goes on from the prefill's last word...
    went_on, raw = await answer(True), await generate(engine, "", temperature=0.0, max_tokens=24, raw_prompt=chatml)
    assert went_on.key() == raw.key()
    # ...where without it the prefill is a finished turn and a new one starts.
    new_turn = await answer(False)
    anew = await generate(engine, "", temperature=0.0, max_tokens=24, raw_prompt=chatml + "<|im_end|>\n<|im_start|>assistant\n")
    assert new_turn.key() == anew.key() and new_turn.text != went_on.text


def test_a_process_that_served_a_request_exits_cleanly(tiny_model_dir: Path) -> None:
    # mlx aborts the interpreter at exit (status 134) when a thread's streams are left behind.
    script = f"""
import asyncio
from darkbloom.node.engine.base import Finished
from darkbloom.node.engine.mlx_engine import MLXEngine
from darkbloom.protocol import ChatMessage, SamplingParams

async def main():
    engine = MLXEngine({str(tiny_model_dir)!r}, "tiny")
    engine.wait_ready(60)
    events = asyncio.Queue()
    engine.submit("r", (ChatMessage(role="user", content="hi"),), SamplingParams(max_tokens=4, temperature=0), events)
    while not isinstance(await events.get(), Finished):
        pass
    engine.close()

asyncio.run(main())
print("served")
"""
    # The abort is intermittent, so a few processes at once make a regression show up.
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert (proc.returncode, out.strip()) == (0, "served"), err


async def test_capacity_reports_measured_rates_and_reserved_tokens(engine: MLXEngine) -> None:
    await generate(engine, "the quick brown fox jumps over the lazy dog. " * 4, **GREEDY)
    idle = engine.capacity()
    assert idle.observed_prefill_tps > 0 and idle.observed_decode_tps > 0
    assert (idle.num_running, idle.active_token_budget_used) == (0, 0)
    assert idle.active_token_budget_max == engine.context_length * engine.max_concurrency

    request_id, events = submit(engine, "hello", temperature=0.0, max_tokens=500)
    head = await first_delta(events)
    busy = engine.capacity()
    assert busy.state == "running" and busy.num_running == 1
    assert busy.active_token_budget_used > 500, "a running request reserves its prompt plus max_tokens"
    engine.cancel(request_id)
    await collect(request_id, events, seen=(head,))


async def test_a_repeated_prefix_is_served_from_the_prompt_cache_with_the_same_answer(tiny_model_dir: Path) -> None:
    eng = MLXEngine(tiny_model_dir, "tiny-cache", max_concurrency=4)
    cold = MLXEngine(tiny_model_dir, "tiny-cold", max_concurrency=4, prompt_cache_size=0)
    eng.wait_ready(60)
    cold.wait_ready(60)
    try:
        prompt = "the quick brown fox jumps over the lazy dog. " * 3
        first = await generate(eng, prompt, **GREEDY)
        assert first.finished.usage.cached_tokens == 0
        again = await generate(eng, prompt, **GREEDY)
        assert again.finished.usage.cached_tokens == again.finished.usage.prompt_tokens - 1
        longer = await generate(eng, prompt + "hello world", **GREEDY)
        assert 0 < longer.finished.usage.cached_tokens < longer.finished.usage.prompt_tokens
        for out, p in ((again, prompt), (longer, prompt + "hello world")):
            assert out.key() == (await generate(cold, p, **GREEDY)).key(), "a cache hit must not change the answer"
    finally:
        eng.close()
        cold.close()


def _chatty_with_special_tokens(src: Path, dst: Path) -> Path:
    """``src`` with an untied output layer that always picks ``<|endoftext|>`` or ``<|im_start|>``.

    Rows 0 and 1 of the head are ``v`` and ``-v``, every other row zero: for any
    hidden state one of the two special tokens (neither is the EOS) scores highest.
    """
    import json
    import shutil

    import mlx.core as mx

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    weights = mx.load(str(dst / "model.safetensors"))
    vocab, hidden = weights["model.embed_tokens.weight"].shape
    v = mx.random.normal((hidden,), key=mx.random.key(3))
    head = mx.zeros((vocab, hidden))
    head[0] = v
    head[1] = -v
    weights["lm_head.weight"] = head
    mx.save_safetensors(str(dst / "model.safetensors"), weights, metadata={"format": "mlx"})
    config["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(config))
    return dst


async def test_special_tokens_the_model_samples_never_reach_the_answer(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A chat model that samples ``<|im_start|>`` (SmolLM2 does at temperature 1) shows nothing of it; it is still counted."""
    eng = MLXEngine(_chatty_with_special_tokens(tiny_model_dir, tmp_path / "special"), "special", max_concurrency=2)
    eng.wait_ready(timeout=60)
    try:
        out = await generate(eng, "hello", temperature=0.0, max_tokens=12)
    finally:
        eng.close()
    assert out.text == ""  # without the filter: "<|im_start|><|im_start|>..." or "<|endoftext|>..."
    assert out.finished.usage.completion_tokens == 12 == sum(d.tokens for d in out.deltas)
    assert out.finished.finish_reason == "length"


def test_tool_call_markers_stay_visible_even_when_special() -> None:
    from types import SimpleNamespace

    from darkbloom.node.engine.mlx_engine import hidden_token_ids

    added = {
        0: SimpleNamespace(content="<s>", special=True),
        5: SimpleNamespace(content="[TOOL_CALLS]", special=True),  # Mistral marks its tool calls with a special token
        6: SimpleNamespace(content="<think>", special=False),
    }
    tok = SimpleNamespace(
        tool_call_start="[TOOL_CALLS]", tool_call_end="", added_tokens_decoder=added,
        all_special_ids=[0, 5], convert_ids_to_tokens=lambda i: added[i].content,
    )  # fmt: skip
    assert hidden_token_ids(tok) == {0}
