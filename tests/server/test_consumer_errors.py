"""Bad input on the consumer routes: status code and OpenAI error body for each case."""

from __future__ import annotations

from typing import Any

import pytest

from darkbloom.protocol import ModelInfo, Register, decode, encode
from tests.server.conftest import Coordinator, register

CHAT = "/v1/chat/completions"
GOOD = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}


def _error(resp, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_missing_key_is_401(coordinator: Coordinator) -> None:
    err = _error(coordinator.client.post(CHAT, json=GOOD), 401)
    assert err["code"] == "missing_api_key"


def test_wrong_key_is_401(coordinator: Coordinator) -> None:
    resp = coordinator.client.post(CHAT, json=GOOD, headers={"Authorization": "Bearer dbk-nope"})
    assert _error(resp, 401)["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "body",
    [
        b"", b"{", b'"hi"', b"42", b"null", b"[]", b'{"model": "m1",}', b"{'model': 'm1'}", b"\xff\xfe\x00",
        b'{"model": "m1", "messages": [{"role": "user", "content": "caf\xe9"}]}',  # Latin-1, not UTF-8, inside a string
    ],
    ids=["empty", "truncated", "string", "number", "null", "array", "trailing-comma", "single-quotes", "binary", "latin1-in-string"],
)
def test_malformed_json_is_400(coordinator: Coordinator, body: bytes) -> None:
    resp = coordinator.client.post(CHAT, content=body, headers=coordinator.auth)
    assert _error(resp, 400)["type"] == "invalid_request_error"


def test_missing_messages_names_the_param(coordinator: Coordinator) -> None:
    resp = coordinator.client.post(CHAT, json={"model": "m1"}, headers=coordinator.auth)
    assert _error(resp, 400)["param"] == "messages"


def test_unknown_model_is_404(coordinator: Coordinator) -> None:
    resp = coordinator.client.post(CHAT, json={**GOOD, "model": "nope"}, headers=coordinator.auth)
    err = _error(resp, 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"


def test_model_without_a_node_is_503_with_retry_after(coordinator: Coordinator) -> None:
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws)
    # The node came and went: the model is known but nobody serves it now.
    resp = coordinator.client.post(CHAT, json=GOOD, headers=coordinator.auth)
    assert _error(resp, 503)["code"] == "model_unavailable"
    assert int(resp.headers["retry-after"]) > 0


def test_body_over_the_limit_is_413(coordinator: Coordinator) -> None:
    big = {"model": "m1", "messages": [{"role": "user", "content": "x" * (coordinator.settings.max_body_bytes + 1)}]}
    resp = coordinator.client.post(CHAT, json=big, headers=coordinator.auth)
    assert _error(resp, 413)["code"] == "request_too_large"


def test_unknown_v1_path_is_404_naming_the_endpoint(coordinator: Coordinator) -> None:
    err = _error(coordinator.client.post("/v1/embeddings", json={}, headers=coordinator.auth), 404)
    assert err["message"] == "endpoint POST /v1/embeddings is not implemented"


def test_unknown_anthropic_path_is_404_in_anthropics_shape(coordinator: Coordinator) -> None:
    resp = coordinator.client.post("/v1/messages/batches", json={}, headers=coordinator.auth)
    assert resp.status_code == 404
    assert resp.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "endpoint POST /v1/messages/batches is not implemented"},
    }


def test_models_lists_only_served_models(coordinator: Coordinator) -> None:
    assert coordinator.client.get("/v1/models", headers=coordinator.auth).json() == {"object": "list", "data": []}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws, model="m1")
        data = coordinator.client.get("/v1/models", headers=coordinator.auth).json()["data"]
        assert [m["id"] for m in data] == ["m1"] and data[0]["object"] == "model"
    assert coordinator.client.get("/v1/models", headers=coordinator.auth).json()["data"] == []


def test_a_model_lists_the_parameters_some_node_serving_it_honours(coordinator: Coordinator) -> None:
    def node(ws: Any, node_id: str, info: ModelInfo) -> None:
        ws.send_bytes(encode(Register(node_id=node_id, models=(info,))))  # type: ignore[arg-type]
        decode(ws.receive_bytes())

    with coordinator.client.websocket_connect("/v1/provider/ws") as a, coordinator.client.websocket_connect("/v1/provider/ws") as b:
        node(a, "node-a", ModelInfo(id="m1", context_length=2048, supports_json=True))
        node(b, "node-b", ModelInfo(id="m1", context_length=4096, supports_logprobs=True))
        listed = coordinator.client.get("/v1/models", headers=coordinator.auth).json()["data"][0]
        one = coordinator.client.get("/v1/models/m1", headers=coordinator.auth).json()
    assert listed == one and one["context_length"] == 4096
    params = one["supported_parameters"]
    assert {"temperature", "response_format", "structured_outputs", "logprobs", "top_logprobs"} <= set(params)
    assert "tools" not in params  # neither node renders tools for m1


def test_an_anthropic_client_gets_models_in_anthropics_shape(coordinator: Coordinator) -> None:
    anthropic = {"x-api-key": coordinator.auth["Authorization"].removeprefix("Bearer "), "anthropic-version": "2023-06-01"}
    with coordinator.client.websocket_connect("/v1/provider/ws") as ws:
        register(ws, model="m1")
        page = coordinator.client.get("/v1/models", headers=anthropic).json()
        one = coordinator.client.get("/v1/models/m1", headers=anthropic).json()
        missing = coordinator.client.get("/v1/models/zzz", headers=anthropic)
    info = {"type": "model", "id": "m1", "display_name": "m1", "created_at": "1970-01-01T00:00:00Z"}
    assert page == {"data": [info], "has_more": False, "first_id": "m1", "last_id": "m1"}
    assert one == info
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    refused = coordinator.client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert refused.status_code == 401 and refused.json()["type"] == "error"
