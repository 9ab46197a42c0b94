"""Every consumer route answers bad input in its own ecosystem's error shape, with the right status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from darkbloom.protocol import Chunk, Complete, Error, ModelInfo, Register, Usage, decode, encode
from tests.server.conftest import Coordinator, register
from tests.server.test_provider_socket import _events

GOOD: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "m1", "prompt": "once upon a time"},
    "/v1/responses": {"model": "m1", "input": "hi"},
    "/v1/messages": {"model": "m1", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
}
ROUTES = list(GOOD)
MAX_TOKENS = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
    "/v1/messages": "max_tokens",
}
REQUIRED = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/responses": "input",
    "/v1/messages": "max_tokens",
}
UNSUPPORTED = {
    "/v1/chat/completions": ("n", 2),
    "/v1/completions": ("best_of", 3),
    "/v1/responses": ("previous_response_id", "resp_123"),
    "/v1/messages": ("top_k", 5),
}


def check_error(route: str, resp: Any, status: int) -> dict[str, Any]:
    """Assert the route's own error shape and status; return the inner error object."""
    assert resp.status_code == status, resp.text
    assert "X-Timing" in resp.headers and "total" in json.loads(resp.headers["X-Timing"])
    body = resp.json()
    if route == "/v1/messages":
        assert set(body) == {"type", "error"} and body["type"] == "error"
        assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    else:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return body["error"]


def register_node(ws: Any, context_length: int = 0, supports_json: bool = True) -> None:
    model = ModelInfo(id="m1", context_length=context_length, supports_json=supports_json)
    ws.send_bytes(encode(Register(node_id="node-a", models=(model,))))  # type: ignore[arg-type]
    assert type(decode(ws.receive_bytes())).__name__ == "Registered"


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "data", [b"", b"{", b'"hi"', b"null", b"[]", b'{"model": "m1",}', b"\xff\xfe\x00", b'{"model": "m\xff1"}', b'{"\xff": 1}']
)
def test_malformed_json_is_400(coordinator: Coordinator, route: str, data: bytes) -> None:
    err = check_error(route, coordinator.client.post(route, content=data, headers=coordinator.auth), 400)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("route", ROUTES)
def test_missing_required_field_is_400_naming_it(coordinator: Coordinator, route: str) -> None:
    body = {k: v for k, v in GOOD[route].items() if k != REQUIRED[route]}
    err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 400)
    assert REQUIRED[route] in (err.get("param") or err["message"])


@pytest.mark.parametrize("route", ROUTES)
def test_wrong_type_is_400_naming_the_field(coordinator: Coordinator, route: str) -> None:
    body = {**GOOD[route], "temperature": "hot"}
    err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 400)
    assert "temperature" in (err.get("param") or err["message"])


@pytest.mark.parametrize("route", ROUTES)
def test_unknown_model_is_404(coordinator: Coordinator, route: str) -> None:
    body = {**GOOD[route], "model": "no-such-model"}
    err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 404)
    assert err["type"] == ("not_found_error" if route == "/v1/messages" else "invalid_request_error")
    if route != "/v1/messages":
        assert (err["code"], err["param"]) == ("model_not_found", "model")


@pytest.mark.parametrize("route", ROUTES)
def test_unsupported_parameter_is_400_naming_it(coordinator: Coordinator, route: str) -> None:
    name, value = UNSUPPORTED[route]
    err = check_error(
        route, coordinator.client.post(route, json={**GOOD[route], name: value}, headers=coordinator.auth), 400
    )
    assert name in (err.get("param") or err["message"])


@pytest.mark.parametrize("route", ROUTES)
def test_missing_key_is_401_in_the_routes_shape(coordinator: Coordinator, route: str) -> None:
    err = check_error(route, coordinator.client.post(route, json=GOOD[route]), 401)
    assert err["type"] == "authentication_error"


def test_messages_accepts_x_api_key(coordinator: Coordinator) -> None:
    resp = coordinator.client.post(
        "/v1/messages", json={**GOOD["/v1/messages"], "model": "nope"}, headers={"x-api-key": coordinator.key}
    )
    assert check_error("/v1/messages", resp, 404)["type"] == "not_found_error"


@pytest.mark.parametrize("route", ROUTES)
def test_max_tokens_beyond_the_context_is_400(coordinator: Coordinator, route: str) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws, context_length=100)
        body = {**GOOD[route], MAX_TOKENS[route]: 101}
        err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 400)
        assert "100" in err["message"]
        if route != "/v1/messages":
            assert err["param"] == MAX_TOKENS[route]


@pytest.mark.parametrize("route", ROUTES)
def test_context_too_long_from_the_node_is_400(coordinator: Coordinator, route: str) -> None:
    """The node counts the prompt's tokens; its refusal reaches the caller in the route's shape."""
    import threading

    out: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        t = threading.Thread(
            target=lambda: out.update(resp=coordinator.client.post(route, json=GOOD[route], headers=coordinator.auth))
        )
        t.start()
        req = decode(ws.receive_bytes())
        msg = "prompt of 5000 tokens plus max_tokens 8 exceeds the model's context length of 2048 tokens"
        ws.send_bytes(encode(Error(message=msg, code="context_length_exceeded", status=400, request_id=req.request_id)))
        t.join(10)
    err = check_error(route, out["resp"], 400)
    assert "context length" in err["message"]
    if route != "/v1/messages":
        assert err["code"] == "context_length_exceeded"


def test_tools_are_refused_naming_the_model(coordinator: Coordinator) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)  # a node whose template has no tool-calling format
        err = check_error(
            "/v1/chat/completions",
            coordinator.client.post(
                "/v1/chat/completions", json={**GOOD["/v1/chat/completions"], "tools": tools}, headers=coordinator.auth
            ),
            400,
        )
    assert err["param"] == "tools" and "m1" in err["message"]


@pytest.mark.parametrize(
    ("route", "param", "fmt"),
    [
        ("/v1/chat/completions", "response_format", {"response_format": {"type": "json_object"}}),
        ("/v1/responses", "text.format", {"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}),
    ],
)
def test_json_output_is_refused_when_no_node_can_constrain_the_model(
    coordinator: Coordinator, route: str, param: str, fmt: dict[str, Any]
) -> None:
    body = {**GOOD[route], **fmt, "input": "in json", "messages": [{"role": "user", "content": "in json"}]}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws, supports_json=False)  # an older node: it would ignore the format
        err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 400)
    assert err["param"] == param and "m1" in err["message"] and "JSON" in err["message"]


@pytest.mark.parametrize(
    ("route", "param", "fmt"),
    [
        ("/v1/chat/completions", "response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}}),
        ("/v1/responses", "text.format", {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}}),
        ("/v1/messages", "output_config.format", {"output_config": {"format": {"type": "json_schema", "schema": {"type": "objekt"}}}}),
    ],
)  # fmt: skip
def test_a_schema_no_node_could_enforce_is_a_400_before_routing(
    coordinator: Coordinator, route: str, param: str, fmt: dict[str, Any]
) -> None:
    body = {**GOOD[route], **fmt}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)  # can constrain: the schema itself is the problem
        err = check_error(route, coordinator.client.post(route, json=body, headers=coordinator.auth), 400)
    assert param in err["message"] and "objekt" in err["message"]
    assert route == "/v1/messages" or err["param"] == param  # Anthropic's errors name no param


def test_json_mode_needs_the_word_json(coordinator: Coordinator) -> None:
    body = {**GOOD["/v1/chat/completions"], "response_format": {"type": "json_object"}}
    err = check_error(
        "/v1/chat/completions",
        coordinator.client.post("/v1/chat/completions", json=body, headers=coordinator.auth),
        400,
    )
    assert "json" in err["message"]


def test_node_error_mid_stream_is_one_anthropic_error_event(coordinator: Coordinator) -> None:
    import threading

    out: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        body = {**GOOD["/v1/messages"], "stream": True}
        t = threading.Thread(
            target=lambda: out.update(resp=coordinator.client.post("/v1/messages", json=body, headers=coordinator.auth))
        )
        t.start()
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="Hel")))
        ws.send_bytes(encode(Error(message="engine fell over", request_id=req.request_id)))
        t.join(10)
    resp = out["resp"]
    assert resp.status_code == 200
    kinds = [line.removeprefix("event: ") for line in resp.text.splitlines() if line.startswith("event: ")]
    assert kinds == ["message_start", "content_block_start", "ping", "content_block_delta", "error"]
    assert json.loads(_events(resp.text)[-1])["error"] == {"type": "api_error", "message": "engine fell over"}


def test_completions_send_the_prompt_verbatim_and_echo_it(coordinator: Coordinator) -> None:
    import threading

    out: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        body = {**GOOD["/v1/completions"], "echo": True, "user": "u-42"}
        t = threading.Thread(
            target=lambda: out.update(
                resp=coordinator.client.post("/v1/completions", json=body, headers=coordinator.auth)
            )
        )
        t.start()
        raw = ws.receive_bytes()
        req = decode(raw)
        assert req.params.raw_prompt == "once upon a time" and req.messages == ()
        assert req.params.max_tokens == 16 and b"u-42" not in raw
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text=", the end")))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(4, 3), finish_reason="stop")))
        t.join(10)
    choice = out["resp"].json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == ("once upon a time, the end", "stop")


def _post_in_thread(coordinator: Coordinator, route: str, body: dict[str, Any], out: dict[str, Any]) -> Any:
    import threading

    t = threading.Thread(
        target=lambda: out.update(resp=coordinator.client.post(route, json=body, headers=coordinator.auth))
    )
    t.start()
    return t


def test_node_error_mid_stream_is_one_response_failed_event(coordinator: Coordinator) -> None:
    out: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        t = _post_in_thread(coordinator, "/v1/responses", {**GOOD["/v1/responses"], "stream": True}, out)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="Hel")))
        ws.send_bytes(encode(Error(message="engine fell over", request_id=req.request_id)))
        t.join(10)
    events = [json.loads(e) for e in _events(out["resp"].text)]
    assert [e["type"] for e in events][-2:] == ["response.output_text.delta", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"] == "engine fell over"


def test_sampling_options_reach_the_node_and_caller_fields_do_not(coordinator: Coordinator) -> None:
    out: dict[str, Any] = {}
    body = {
        "model": "m1",
        "messages": [{"role": "user", "content": "reply in JSON"}],
        "response_format": {"type": "json_object"},
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "seed": -1,
        "stop": "END",
        "max_completion_tokens": 7,
        "user": "alice@example.com",
        "metadata": {"secret": "s3cr3t"},
    }
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        t = _post_in_thread(coordinator, "/v1/chat/completions", body, out)
        raw = ws.receive_bytes()
        req = decode(raw)
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(3, 0))))
        t.join(10)
    p = req.params
    assert (p.response_format, p.presence_penalty, p.frequency_penalty, p.stop, p.max_tokens) == (
        "json_object",
        0.5,
        -0.25,
        ("END",),
        7,
    )
    assert p.seed == 2**64 - 1  # any 64-bit seed is fine; the node's PRNG takes it unsigned
    assert b"alice" not in raw and b"s3cr3t" not in raw
    assert out["resp"].status_code == 200


def test_openapi_document_lists_every_consumer_route(coordinator: Coordinator) -> None:
    doc = coordinator.client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/models",
        "/v1/models/capacity",
        "/v1/models/{model}",
        "/v1/balance",
        "/v1/usage",
        "/v1/pricing",
        "/v1/providers/keys",
        "/v1/receipts/{request_id}",
    }
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert set(chat["required"]) == {"model", "messages"} and "presence_penalty" in chat["properties"]
    assert "X-Timing" in doc["paths"]["/v1/messages"]["post"]["responses"]["200"]["headers"]


@pytest.mark.parametrize(
    "path", ["/health", "/v1/models", "/v1/nope", "/openapi.json", "/v1/models/capacity", "/v1/models/m1"]
)
def test_every_response_carries_x_timing(coordinator: Coordinator, path: str) -> None:
    resp = coordinator.client.get(path, headers=coordinator.auth)
    timing = json.loads(resp.headers["x-timing"])
    assert isinstance(timing["total"], int) and timing["total"] >= 0
    assert resp.headers.get_list("x-timing") == [resp.headers["x-timing"]]


def _answer_once(coordinator: Coordinator, route: str, body: dict[str, Any]) -> Any:
    out: dict[str, Any] = {}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register_node(ws)
        t = _post_in_thread(coordinator, route, body, out)
        req = decode(ws.receive_bytes())
        ws.send_bytes(encode(Chunk(request_id=req.request_id, seq=0, text="Hel")))
        ws.send_bytes(encode(Complete(request_id=req.request_id, usage=Usage(3, 1))))
        t.join(10)
    return out["resp"]


def _broken(*_a: Any, **_k: Any) -> Any:
    raise KeyError("a bug")


def test_a_bug_in_an_adapter_is_a_500_in_the_routes_shape(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from darkbloom.server.api import messages

    monkeypatch.setattr(messages, "message_object", _broken)
    err = check_error("/v1/messages", _answer_once(coordinator, "/v1/messages", GOOD["/v1/messages"]), 500)
    assert err["type"] == "api_error"


def test_a_bug_mid_stream_ends_it_with_one_error_event(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from darkbloom.server.api import messages

    monkeypatch.setattr(messages, "stream_delta", _broken)
    resp = _answer_once(coordinator, "/v1/messages", {**GOOD["/v1/messages"], "stream": True})
    kinds = [line.removeprefix("event: ") for line in resp.text.splitlines() if line.startswith("event: ")]
    assert kinds == ["message_start", "content_block_start", "ping", "error"]
    assert json.loads(_events(resp.text)[-1])["error"]["type"] == "api_error"
