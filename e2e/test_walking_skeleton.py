"""The walking skeleton, end to end: real processes, the official openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from e2e.conftest import Network

PROMPT = [{"role": "user", "content": "what is the capital of france?"}]


def _reference(model_dir, max_tokens: int) -> tuple[str, int]:
    """Greedy generation of PROMPT done directly with mlx-lm: the oracle."""
    import mlx_lm

    model, tok = mlx_lm.load(str(model_dir))
    prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    text, n = "", 0
    for resp in mlx_lm.stream_generate(model, tok, prompt, max_tokens=max_tokens):
        text += resp.text
        n = resp.generation_tokens
    return text, n


def test_openai_sdk_streams_a_chat_completion(network: Network) -> None:
    client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=network.key)
    models = [m.id for m in client.models.list()]
    assert models == [network.model]

    stream = client.chat.completions.create(
        model=network.model,
        messages=PROMPT,
        stream=True,
        max_tokens=24,
        temperature=0,
        stream_options={"include_usage": True},
    )
    contents, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                contents.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(contents) > 1, "content should arrive in more than one chunk"
    assert usage is not None, "include_usage must put usage on the final chunk"
    ref_text, ref_tokens = _reference(network.model_dir, 24)
    assert usage.completion_tokens == ref_tokens
    assert "".join(contents) == ref_text
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert finish in ("length", "stop")


def test_openai_sdk_non_streaming(network: Network) -> None:
    client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=network.key)
    resp = client.chat.completions.create(model=network.model, messages=PROMPT, max_tokens=10, temperature=0)
    ref_text, ref_tokens = _reference(network.model_dir, 10)
    assert resp.choices[0].message.content == ref_text
    assert resp.usage is not None and resp.usage.completion_tokens == ref_tokens


def test_node_killed_mid_stream_ends_with_an_error_event(network: Network) -> None:
    client = openai.OpenAI(base_url=f"{network.base_url}/v1", api_key=network.key, max_retries=0)
    stream = client.chat.completions.create(
        model=network.model, messages=PROMPT, stream=True, max_tokens=1500, temperature=0
    )
    received = 0
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
                if received == 3:
                    network.nodes[0].kill()
            if chunk.choices and chunk.choices[0].finish_reason:
                pytest.fail("stream finished normally although the node was killed")
    assert received >= 3
    assert "provider disconnected" in str(info.value)


def test_node_reconnects_after_coordinator_restart(network: Network) -> None:
    from darkbloom.testing import start, wait_http, wait_model

    port = network.base_url.rsplit(":", 1)[1]
    network.coordinator.kill()
    time.sleep(0.5)
    network.coordinator = start(
        ["serve", "--port", port, "--db", network.db_url, "--home", str(network.home / "coord")],
        network.home / "coord2.log",
    )
    wait_http(f"{network.base_url}/health", proc=network.coordinator)
    # The node backs off 1 s, 2 s, ... and comes back on its own; the key survived in SQLite.
    wait_model(network.base_url, network.key, network.model, timeout=30)
    r = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {network.key}"},
        json={"model": network.model, "messages": PROMPT, "max_tokens": 4},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4 or r.json()["choices"][0]["finish_reason"] == "stop"
