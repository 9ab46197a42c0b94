"""The consumer API against a real coordinator and node, driven by the official openai and anthropic SDKs.

Greedy outputs are checked against mlx-lm run directly on the same model (the
oracle), so each test sees what a user would: the right text, cut where it
should be, with the right usage, in a shape the SDK itself parses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from darkbloom.node.engine.mlx_engine import hidden_token_ids
from e2e.conftest import Network

PROMPT = [{"role": "user", "content": "what is the capital of france?"}]
RAW_PROMPT = "the quick brown fox"
GREEDY = {"temperature": 0}  # the anthropic SDK no longer has a temperature argument; the API still takes it
TOO_LONG = "hello world " * 1500  # > 2048 tokens: the tiny model's context


@lru_cache(maxsize=4)
def _model(model_dir: Path) -> Any:
    import mlx_lm

    return mlx_lm.load(str(model_dir))


def reference(model_dir: Path, max_tokens: int, *, chat: bool = True) -> str:
    """Greedy text straight from mlx-lm: the chat PROMPT through the template, or RAW_PROMPT verbatim."""
    import mlx_lm

    model, tok = _model(model_dir)
    if not chat:
        return continuation(model_dir, tok.encode(RAW_PROMPT), max_tokens)
    prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    hidden = hidden_token_ids(tok)  # special tokens the model samples show nothing, as on the node
    return "".join(r.text for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=max_tokens) if r.token not in hidden)


def continuation(model_dir: Path, prompt: list[int], max_tokens: int) -> str:
    """Greedy text that goes on from ``prompt``'s own text (a leading space kept): the whole decoded, less the prompt."""
    import mlx_lm

    model, tok = _model(model_dir)
    tokens = [r.token for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=max_tokens)]
    return str(tok.decode(prompt + tokens, skip_special_tokens=True))[len(tok.decode(prompt, skip_special_tokens=True)) :]


def stop_in(text: str) -> tuple[str, str]:
    """A stop string from the middle of ``text`` and what the answer must be cut to."""
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"reference text too short to pick a stop string from: {text!r}"
    return stop, text[: text.find(stop)]


@pytest.fixture(scope="module")
def oai(shared_network: Network) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{shared_network.base_url}/v1", api_key=shared_network.key, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def claude(shared_network: Network) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=shared_network.base_url, api_key=shared_network.key, max_retries=0) as client:
        yield client


# ---- chat completions -------------------------------------------------------------------------


def test_chat_non_stream_cuts_at_a_stop_string(shared_network: Network, oai: openai.OpenAI) -> None:
    stop, expected = stop_in(reference(shared_network.model_dir, 24))
    resp = oai.chat.completions.create(
        model=shared_network.model, messages=PROMPT, max_tokens=24, temperature=0, stop=stop
    )
    assert resp.choices[0].message.content == expected
    assert resp.choices[0].finish_reason == "stop"


def test_chat_stream_with_stop_list_and_usage(shared_network: Network, oai: openai.OpenAI) -> None:
    stop, expected = stop_in(reference(shared_network.model_dir, 24))
    stream = oai.chat.completions.create(
        model=shared_network.model,
        messages=PROMPT,
        max_completion_tokens=24,
        temperature=0,
        stop=["zzzz-never", stop],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert 0 < chunks[-1].usage.completion_tokens <= 24


def test_presence_penalty_is_honoured(shared_network: Network, oai: openai.OpenAI) -> None:
    def ask(**extra: Any) -> str:
        r = oai.chat.completions.create(
            model=shared_network.model, messages=PROMPT, max_tokens=40, temperature=0, **extra
        )
        return r.choices[0].message.content or ""

    plain = ask()
    assert plain == reference(shared_network.model_dir, 40)
    assert ask(presence_penalty=2.0) != plain
    assert ask(frequency_penalty=2.0) != plain


def test_tools_are_rendered_into_the_prompt_by_the_node(shared_network: Network, oai: openai.OpenAI) -> None:
    # The tiny model's template is tool-capable (ChatML + <tool_call> JSON); its random weights never
    # emit a call, so this pins the rendering: the node's prompt and answer equal mlx-lm's with the tools.
    import mlx_lm

    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]
    model, tok = _model(shared_network.model_dir)
    prompt = tok.apply_chat_template(PROMPT, tools=tools, add_generation_prompt=True)
    expected = "".join(r.text for r in mlx_lm.stream_generate(model, tok, prompt, max_tokens=8))
    resp = oai.chat.completions.create(
        model=shared_network.model, messages=PROMPT, tools=tools, tool_choice="auto", max_tokens=8, **GREEDY  # type: ignore[arg-type]
    )
    assert resp.usage is not None and resp.usage.prompt_tokens == len(prompt)
    assert resp.choices[0].message.content == expected
    plain = oai.chat.completions.create(model=shared_network.model, messages=PROMPT, max_tokens=1, **GREEDY)  # type: ignore[arg-type]
    assert plain.usage is not None and plain.usage.prompt_tokens < len(prompt)


def test_anthropic_tools_are_rendered_as_the_same_tools(shared_network: Network, claude: anthropic.Anthropic) -> None:
    """Anthropic's tool shape reaches the template as the OpenAI one would: the same prompt, token for token."""
    schema = {"type": "object", "properties": {}}
    tools = [{"type": "function", "function": {"name": "weather", "description": "", "parameters": schema}}]
    _, tok = _model(shared_network.model_dir)
    prompt = tok.apply_chat_template(PROMPT, tools=tools, add_generation_prompt=True)
    msg = claude.messages.create(
        model=shared_network.model, max_tokens=8, messages=PROMPT, extra_body=GREEDY,  # type: ignore[arg-type]
        tools=[{"name": "weather", "input_schema": schema}],  # type: ignore[list-item]
    )
    assert msg.usage.input_tokens == len(prompt)
    counted = claude.messages.count_tokens(model=shared_network.model, messages=PROMPT, tools=[{"name": "weather", "input_schema": schema}])  # type: ignore[arg-type,list-item]
    assert counted.input_tokens == len(prompt)


def test_responses_tools_and_tool_turns_are_rendered_as_chat_would(shared_network: Network, oai: openai.OpenAI) -> None:
    """The Responses shapes (flat tools, function_call items) reach the template as chat's: the same prompt, token for token."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": schema}}]
    _, tok = _model(shared_network.model_dir)
    turn = [
        *PROMPT,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
        ]},
        {"role": "tool", "tool_call_id": "call_0", "content": "18C"},
    ]  # fmt: skip
    for chat_messages, items in (
        (PROMPT, PROMPT),
        (turn, [
            *PROMPT,
            {"type": "function_call", "call_id": "call_0", "name": "weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_0", "output": "18C"},
        ]),
    ):  # fmt: skip
        prompt = tok.apply_chat_template(chat_messages, tools=tools, add_generation_prompt=True)
        resp = oai.responses.create(
            model=shared_network.model, input=items, max_output_tokens=8, temperature=0,  # type: ignore[arg-type]
            tools=[{"type": "function", "name": "weather", "description": "Weather", "parameters": schema}],  # type: ignore[list-item]
        )
        assert resp.usage is not None and resp.usage.input_tokens == len(prompt)
        assert resp.status in ("completed", "incomplete") and resp.output


def test_json_mode_and_seeded_sampling_are_accepted(shared_network: Network, oai: openai.OpenAI) -> None:
    def ask() -> str:
        r = oai.chat.completions.create(
            model=shared_network.model,
            messages=[{"role": "user", "content": "answer in json"}],
            response_format={"type": "json_object"},
            max_tokens=12,
            temperature=0.9,
            seed=-7,
        )
        return r.choices[0].message.content or ""

    assert ask() == ask()  # the same seed gives the same sample


# ---- legacy completions -----------------------------------------------------------------------


def test_completions_non_stream_uses_the_raw_prompt(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.completions.create(
        model=shared_network.model, prompt=RAW_PROMPT, max_tokens=12, temperature=0, echo=True
    )
    assert resp.object == "text_completion"
    assert resp.choices[0].text == RAW_PROMPT + reference(shared_network.model_dir, 12, chat=False)
    assert resp.usage is not None and resp.usage.completion_tokens == 12


def test_completions_stream(shared_network: Network, oai: openai.OpenAI) -> None:
    stream = oai.completions.create(
        model=shared_network.model,
        prompt=RAW_PROMPT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reference(
        shared_network.model_dir, 12, chat=False
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


# ---- responses --------------------------------------------------------------------------------


def test_responses_non_stream(shared_network: Network, oai: openai.OpenAI) -> None:
    resp = oai.responses.create(
        model=shared_network.model, input=PROMPT[0]["content"], max_output_tokens=16, temperature=0
    )
    assert resp.output_text == reference(shared_network.model_dir, 16)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 16


def test_responses_stream_follows_the_documented_event_sequence(shared_network: Network, oai: openai.OpenAI) -> None:
    events = list(
        oai.responses.create(
            model=shared_network.model,
            input=[{"role": "user", "content": PROMPT[0]["content"]}],
            max_output_tokens=16,
            temperature=0,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    tail = [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert kinds[:4] == head and kinds[-4:] == tail
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds) > 9
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reference(shared_network.model_dir, 16)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and final.usage is not None and final.usage.output_tokens == 16


# ---- anthropic messages -----------------------------------------------------------------------


def test_messages_non_stream(shared_network: Network, claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model=shared_network.model, max_tokens=10, messages=PROMPT, extra_body=GREEDY)  # type: ignore[arg-type]
    assert msg.content[0].type == "text" and msg.content[0].text == reference(shared_network.model_dir, 10)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 10 and msg.usage.input_tokens > 0


def test_messages_stream(shared_network: Network, claude: anthropic.Anthropic) -> None:
    stop, expected = stop_in(reference(shared_network.model_dir, 24))
    with claude.messages.stream(
        model=shared_network.model,
        max_tokens=24,
        messages=PROMPT,
        stop_sequences=[stop],
        extra_body=GREEDY,  # type: ignore[arg-type]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)
    assert final.content[0].text == expected  # type: ignore[union-attr]
    assert final.usage.input_tokens > 0 and 0 < final.usage.output_tokens <= 24


def test_a_prefilled_assistant_turn_is_continued(shared_network: Network, oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    """Anthropic prefill (and vLLM's ``continue_final_message``): the answer goes on from the caller's start."""
    prefix = "The capital of France is"
    _, tok = _model(shared_network.model_dir)
    # The oracle: the chat template's generation prompt, then the prefill as if the model had written it.
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) + prefix
    expected = continuation(shared_network.model_dir, tok.encode(text, add_special_tokens=False), 12)
    messages = [*PROMPT, {"role": "assistant", "content": prefix}]

    msg = claude.messages.create(model=shared_network.model, max_tokens=12, messages=messages, extra_body=GREEDY)  # type: ignore[arg-type]
    assert msg.content[0].text == expected  # type: ignore[union-attr]
    chat = oai.chat.completions.create(
        model=shared_network.model, max_tokens=12, messages=messages, extra_body={**GREEDY, "continue_final_message": True}  # type: ignore[arg-type]
    )
    assert chat.choices[0].message.content == expected
    with pytest.raises(anthropic.BadRequestError, match="trailing whitespace"):
        claude.messages.create(
            model=shared_network.model, max_tokens=12, messages=[*PROMPT, {"role": "assistant", "content": prefix + " "}]
        )


def test_the_anthropic_sdk_lists_and_retrieves_models(shared_network: Network, claude: anthropic.Anthropic) -> None:
    listed = list(claude.models.list())
    assert [(m.id, m.display_name, m.type) for m in listed] == [(shared_network.model, shared_network.model, "model")]
    assert claude.models.retrieve(shared_network.model).created_at.year == 1970
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("no-such-model")


def test_count_tokens_is_the_prompt_the_node_would_see(
    shared_network: Network, claude: anthropic.Anthropic
) -> None:
    _, tok = _model(shared_network.model_dir)
    system = "You answer in one word."
    convo = [{"role": "system", "content": system}, *PROMPT]
    counted = claude.messages.count_tokens(model=shared_network.model, system=system, messages=PROMPT)  # type: ignore[arg-type]
    assert counted.input_tokens == len(tok.apply_chat_template(convo, add_generation_prompt=True))
    # The same figure a real request reports as its input.
    msg = claude.messages.create(model=shared_network.model, max_tokens=2, system=system, messages=PROMPT)  # type: ignore[arg-type]
    assert msg.usage.input_tokens == counted.input_tokens
    prefilled = [*PROMPT, {"role": "assistant", "content": "The capital is"}]
    with_prefill = claude.messages.count_tokens(model=shared_network.model, messages=prefilled)  # type: ignore[arg-type]
    assert with_prefill.input_tokens == len(tok.apply_chat_template(prefilled, continue_final_message=True))
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=PROMPT)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        claude.messages.count_tokens(model=shared_network.model, messages=[])


# ---- limits, in each SDK's own error type ----------------------------------------------------


def test_context_too_long_and_max_tokens_too_large_are_400s(
    shared_network: Network, oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    long = [{"role": "user", "content": TOO_LONG}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=shared_network.model, messages=long, max_tokens=8)  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=shared_network.model, prompt=RAW_PROMPT, max_tokens=100_000)
    assert info.value.param == "max_tokens"
    with pytest.raises(anthropic.BadRequestError) as ainfo:
        claude.messages.create(model=shared_network.model, max_tokens=8, messages=long)  # type: ignore[arg-type]
    assert "context length" in str(ainfo.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=shared_network.model, max_tokens=5000, messages=PROMPT)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=8, messages=PROMPT)  # type: ignore[arg-type]


# ---- models, capacity, timing -----------------------------------------------------------------


def test_model_lookup_capacity_and_timing_header(shared_network: Network, oai: openai.OpenAI) -> None:
    assert oai.models.retrieve(shared_network.model).id == shared_network.model
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
    raw = oai.chat.completions.with_raw_response.create(model=shared_network.model, messages=PROMPT, max_tokens=4)
    timing = json.loads(raw.headers["x-timing"])
    assert list(timing) == ["auth", "parse", "admit", "queue", "dispatch", "ttft", "total"]
    assert all(isinstance(v, int) and v >= 0 for v in timing.values())
    assert timing["total"] >= timing["ttft"] > 0
    cap = capacity(shared_network)
    assert cap["nodes"] and cap["slots"] >= 1 and cap["busy_slots"] == 0 and cap["free_slots"] == cap["slots"]
    assert cap["estimated_wait_ms"] == 0


def capacity(net: Network) -> dict[str, Any]:
    r = httpx.get(f"{net.base_url}/v1/models/capacity", headers={"Authorization": f"Bearer {net.key}"}, timeout=10)
    assert r.status_code == 200, r.text
    (entry,) = [m for m in r.json()["data"] if m["id"] == net.model]
    return entry


def test_client_disconnect_cancels_the_generation_and_frees_the_slot(shared_network: Network) -> None:
    body = {"model": shared_network.model, "messages": PROMPT, "max_tokens": 1500, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {shared_network.key}"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{shared_network.base_url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        lines = r.iter_lines()
        assert sum(1 for _, line in zip(range(3), (ln for ln in lines if ln.startswith("data: ")))) == 3
        assert capacity(shared_network)["busy_slots"] == 1
    # The client is gone: the node must hear about it and stop, and the slot must come back.
    deadline = time.monotonic() + 10
    while f"{request_id} cancelled by coordinator" not in shared_network.nodes[0].text():
        assert time.monotonic() < deadline, (
            "the node never reported the cancel:\n" + shared_network.nodes[0].text()[-2000:]
        )
        time.sleep(0.05)
    assert capacity(shared_network)["busy_slots"] == 0
    done = httpx.post(
        f"{shared_network.base_url}/v1/chat/completions",
        json={**body, "stream": False, "max_tokens": 4},
        headers=headers,
        timeout=30,
    )
    assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 4


def test_non_streaming_caller_that_hangs_up_cancels_the_generation(shared_network: Network) -> None:
    node = shared_network.nodes[0]
    before = node.text().count("cancelled by coordinator: client disconnected")
    body = {"model": shared_network.model, "messages": PROMPT, "max_tokens": 2000, "temperature": 0}
    headers = {"Authorization": f"Bearer {shared_network.key}"}
    with pytest.raises(httpx.ReadTimeout):  # gives up long before 2000 tokens are generated
        httpx.post(
            f"{shared_network.base_url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(30, read=0.5),
        )
    deadline = time.monotonic() + 10
    while node.text().count("cancelled by coordinator: client disconnected") == before:
        assert time.monotonic() < deadline, "the node never heard that the caller hung up"
        time.sleep(0.05)
    while capacity(shared_network)["busy_slots"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_usage_says_how_much_of_a_repeated_prompt_the_node_had_cached(shared_network: Network, oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "a prompt long enough to be worth caching: " + "lorem ipsum " * 40}]

    def ask() -> Any:
        return oai.chat.completions.create(model=shared_network.model, messages=messages, max_tokens=4, temperature=0)  # type: ignore[arg-type]

    ask()
    again = ask()
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    cached = again.usage.prompt_tokens_details.cached_tokens or 0
    assert 0 < cached < again.usage.prompt_tokens  # the node's prompt cache held all but the last token
    resp = oai.responses.create(model=shared_network.model, input=messages, max_output_tokens=4, temperature=0)  # type: ignore[arg-type]
    assert resp.usage is not None and resp.usage.input_tokens_details.cached_tokens > 0
