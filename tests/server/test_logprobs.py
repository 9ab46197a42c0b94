"""Chat ``logprobs``/``top_logprobs`` through the coordinator: the OpenAI shapes the SDK parses, the 400s.

A stand-in node answers with the log probabilities a real node reports; the
MLX side is tested against mlx-lm in tests/node/test_logprobs.py.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from darkbloom.protocol import Chunk, Complete, Error, ModelInfo, Register, TokenLogprob, TopLogprob, Usage, decode, encode
from darkbloom.server.attestation.privacy import FlightPrivacy, PrivacyRelay, ReceiptBook
from tests.server.conftest import Coordinator

ASK = {"model": "m1", "messages": [{"role": "user", "content": "capital of France?"}]}
PARIS = TokenLogprob("Paris", -0.25, "", (TopLogprob("Paris", -0.25), TopLogprob("Lyon", -2.5)))
DOT = TokenLogprob("\ufffd", -0.5, "e282", (TopLogprob("\ufffd", -0.5, "e282"), TopLogprob(".", -1.0)))


def _node(ws: Any, supports: bool = True) -> None:
    ws.send_bytes(encode(Register(node_id="lp-node", models=(ModelInfo(id="m1", supports_logprobs=supports),))))  # type: ignore[arg-type]
    decode(ws.receive_bytes())


def _answer(ws: Any, holder: dict[str, Any]) -> None:
    req = decode(ws.receive_bytes())
    holder["request"] = req
    lp = req.params.top_logprobs is not None
    ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="Paris", logprobs=(PARIS,) if lp else ())))
    ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=1, text="", logprobs=(DOT,) if lp else ())))
    ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(9, 2), finish_reason="length")))


def _run(coordinator: Coordinator, call: Any, **kw: Any) -> tuple[Any, Any]:
    """``call(sdk)`` (an SDK request; a stream is read whole) against the stand-in node; its output and the request the node got."""
    holder: dict[str, Any] = {}
    sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=coordinator.key, http_client=coordinator.client, max_retries=0)
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _node(ws)
        node = threading.Thread(target=_answer, args=(ws, holder))
        node.start()
        out = call(sdk)
        if kw.get("stream"):
            out = list(out)
        node.join(10)
    return out, holder["request"]


def _ask(coordinator: Coordinator, **kw: Any) -> tuple[Any, Any]:
    return _run(coordinator, lambda sdk: sdk.chat.completions.create(**ASK, **kw), **kw)


def _complete(coordinator: Coordinator, **kw: Any) -> tuple[Any, Any]:
    return _run(coordinator, lambda sdk: sdk.completions.create(model="m1", prompt="The capital of France is ", **kw), **kw)


def test_a_whole_answer_carries_each_token_with_its_alternatives(coordinator: Coordinator) -> None:
    resp, request = _ask(coordinator, logprobs=True, top_logprobs=2)
    assert request.params.top_logprobs == 2
    content = resp.choices[0].logprobs.content
    assert [(c.token, c.logprob, c.bytes) for c in content] == [("Paris", -0.25, list(b"Paris")), ("\ufffd", -0.5, [0xE2, 0x82])]
    assert [(t.token, t.logprob) for t in content[0].top_logprobs] == [("Paris", -0.25), ("Lyon", -2.5)]
    assert content[1].top_logprobs[1].bytes == [ord(".")]


def test_a_stream_carries_them_chunk_by_chunk(coordinator: Coordinator) -> None:
    chunks, _ = _ask(coordinator, logprobs=True, top_logprobs=2, stream=True)
    got = [c.token for ch in chunks if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert got == ["Paris", "\ufffd"]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Paris"


def test_logprobs_without_top_logprobs_and_none_when_not_asked(coordinator: Coordinator) -> None:
    resp, request = _ask(coordinator, logprobs=True)
    assert request.params.top_logprobs == 0 and resp.choices[0].logprobs.content[0].token == "Paris"
    resp, request = _ask(coordinator)
    assert request.params.top_logprobs is None and resp.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "param", "hint"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"top_logprobs": 2}, "top_logprobs", "logprobs set to true"),
    ],
)
def test_bad_logprobs_options_are_400s(coordinator: Coordinator, extra: dict[str, Any], param: str, hint: str) -> None:
    resp = coordinator.client.post("/v1/chat/completions", json={**ASK, **extra}, headers=coordinator.auth)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param and hint in resp.json()["error"]["message"]


def test_a_legacy_completion_has_the_legacy_logprobs_object(coordinator: Coordinator) -> None:
    resp, request = _complete(coordinator, logprobs=2)
    assert request.params.top_logprobs == 2
    lp = resp.choices[0].logprobs
    assert (lp.tokens, lp.token_logprobs, lp.text_offset) == (["Paris", "\ufffd"], [-0.25, -0.5], [0, 5])
    assert lp.top_logprobs == [{"Paris": -0.25, "Lyon": -2.5}, {"\ufffd": -0.5, ".": -1.0}]
    chunks, _ = _complete(coordinator, logprobs=2, stream=True)
    streamed = [(t, o) for c in chunks if c.choices and c.choices[0].logprobs for t, o in zip(c.choices[0].logprobs.tokens, c.choices[0].logprobs.text_offset)]
    assert streamed == [("Paris", 0), ("\ufffd", 5)]


def test_a_response_carries_them_in_its_output_text_when_included(coordinator: Coordinator) -> None:
    def respond(**kw: Any) -> tuple[Any, Any]:
        return _run(coordinator, lambda sdk: sdk.responses.create(model="m1", input="capital of France?", **kw), **kw)

    include = ["message.output_text.logprobs", "reasoning.encrypted_content"]  # the second adds nothing here
    resp, request = respond(include=include, top_logprobs=2)
    assert request.params.top_logprobs == 2 and resp.top_logprobs == 2
    part = resp.output[0].content[0]
    assert [(e.token, e.bytes) for e in part.logprobs] == [("Paris", list(b"Paris")), ("\ufffd", [0xE2, 0x82])]
    assert [t.token for t in part.logprobs[0].top_logprobs] == ["Paris", "Lyon"]
    events, _ = respond(include=include, stream=True)
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert [lp.token for e in deltas for lp in e.logprobs] == ["Paris", "\ufffd"]
    done = next(e for e in events if e.type == "response.output_text.done")
    assert [lp.token for lp in done.logprobs] == ["Paris", "\ufffd"]
    resp, request = respond(top_logprobs=2)  # not included: none asked of the node, none shown
    assert request.params.top_logprobs is None and resp.output[0].content[0].logprobs == []
    bad = coordinator.client.post("/v1/responses", json={"model": "m1", "input": "hi", "top_logprobs": 21}, headers=coordinator.auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_logprobs"


@pytest.mark.parametrize(
    ("extra", "hint"), [({"logprobs": 6}, "between 0 and 5"), ({"logprobs": 1, "echo": True}, "echo")]
)
def test_bad_legacy_logprobs_are_400s(coordinator: Coordinator, extra: dict[str, Any], hint: str) -> None:
    body = {"model": "m1", "prompt": "hi", **extra}
    resp = coordinator.client.post("/v1/completions", json=body, headers=coordinator.auth)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "logprobs" and hint in resp.json()["error"]["message"]


def test_logprobs_from_a_model_whose_nodes_predate_them_is_a_400(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        _node(ws, supports=False)
        resp = coordinator.client.post("/v1/chat/completions", json={**ASK, "logprobs": True}, headers=coordinator.auth)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "logprobs"


def test_the_coordinator_refuses_logprobs_sent_in_the_clear_for_a_sealed_request() -> None:
    flight = SimpleNamespace(privacy=FlightPrivacy("sealed", "h"), request_id="r1", node_id="n1")
    leak = Chunk(request_id="r1", seq=0, text="", sealed="c2VhbGVk", logprobs=(TokenLogprob("Paris", -0.1),))
    out = PrivacyRelay(ReceiptBook()).incoming(None, flight, leak)
    assert isinstance(out, Error) and out.status == 502 and "plaintext" in out.message
