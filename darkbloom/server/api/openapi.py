"""``GET /openapi.json``: an OpenAPI 3.1 document for the consumer API.

Request schemas are generated from the very msgspec structs that decode the
bodies, so the document cannot drift from what the server accepts. Response
schemas name the fields the official SDKs read.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from darkbloom import __version__
from darkbloom.protocol.anthropic import CountTokensRequest, MessagesRequest
from darkbloom.protocol.openai import ChatCompletionRequest
from darkbloom.protocol.openai_completions import CompletionRequest
from darkbloom.protocol.openai_responses import ResponsesRequest

REF = "#/components/schemas/{name}"

TIMING_HEADER = {
    "description": (
        "JSON object of integer microseconds per stage: auth, parse, admit, queue, dispatch, ttft (dispatch to first "
        "token), total (receipt to response headers). Stages a refused request never reached are left out."
    ),
    "schema": {"type": "string"},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _error_schemas() -> dict[str, Any]:
    return {
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                }
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["id", "object", "choices", "usage"],
            "properties": {"object": {"const": "chat.completion"}},
        },
        "TextCompletion": {
            "type": "object",
            "required": ["id", "object", "choices", "usage"],
            "properties": {"object": {"const": "text_completion"}},
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "status", "output"],
            "properties": {"object": {"const": "response"}},
        },
        "AnthropicMessage": {
            "type": "object",
            "required": ["id", "type", "content", "stop_reason", "usage"],
            "properties": {"type": {"const": "message"}},
        },
        "AnthropicTokenCount": {
            "type": "object",
            "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer"}},
        },
        "Balance": {
            "type": "object",
            "required": ["account_id", "balance_micro_usd"],
            "properties": {"account_id": {"type": "string"}, "balance_micro_usd": {"type": "integer"}},
        },
        "List": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
        },
        "Receipt": {"type": "object"},
        "Model": {
            "type": "object",
            "required": ["id", "object"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"}},
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"data": {"type": "array", "items": _ref("Model")}},
        },
        "ModelCapacity": {
            "type": "object",
            "required": ["id", "nodes", "slots", "free_slots", "busy_slots", "queued", "estimated_wait_ms"],
            "properties": {
                "id": {"type": "string"},
                "nodes": {"type": "array", "items": {"type": "string"}},
                "slots": {"type": "integer"},
                "free_slots": {"type": "integer"},
                "busy_slots": {"type": "integer"},
                "queued": {"type": "integer"},
                "estimated_wait_ms": {"type": ["integer", "null"]},
            },
        },
        "CapacityList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"data": {"type": "array", "items": _ref("ModelCapacity")}},
        },
    }


def _responses(ok: str, error: str, stream: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(ok)}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    err = {
        "description": "refused or failed",
        "headers": {"X-Timing": TIMING_HEADER},
        "content": {"application/json": {"schema": _ref(error)}},
    }
    out: dict[str, Any] = {"200": {"description": "OK", "headers": {"X-Timing": TIMING_HEADER}, "content": content}}
    for status in ("400", "401", "404", "413", "502", "503", "504"):
        out[status] = err
    return out


def _inference(summary: str, body: str, ok: str, error: str, security: list[dict[str, list[str]]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": security,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": _responses(ok, error, stream=True),
        }
    }


def _get(summary: str, ok: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": _responses(ok, "OpenAIError", stream=False),
    }
    if params:
        op["parameters"] = params
    return {"get": op}


_SAMPLING = {"temperature": {"minimum": 0, "maximum": 2}, "top_p": {"exclusiveMinimum": 0, "maximum": 1}}
_PENALTIES = {"presence_penalty": {"minimum": -2, "maximum": 2}, "frequency_penalty": {"minimum": -2, "maximum": 2}}
_CONSTRAINTS: dict[str, dict[str, dict[str, Any]]] = {
    "ChatCompletionRequest": {
        **_SAMPLING,
        **_PENALTIES,
        "model": {"minLength": 1},
        "messages": {"minItems": 1},
        "n": {"minimum": 1, "maximum": 1},
        "max_tokens": {"minimum": 1},
        "max_completion_tokens": {"minimum": 1},
    },
    "CompletionRequest": {
        **_SAMPLING,
        **_PENALTIES,
        "model": {"minLength": 1},
        "n": {"minimum": 1, "maximum": 1},
        "best_of": {"minimum": 1, "maximum": 1},
        "max_tokens": {"minimum": 1},
        "prompt": {"minLength": 1, "minItems": 1, "maxItems": 1},
    },
    "ResponsesRequest": {
        **_SAMPLING,
        "model": {"minLength": 1},
        "input": {"minLength": 1, "minItems": 1},
        "max_output_tokens": {"minimum": 1},
    },
    "MessagesRequest": {
        "temperature": {"minimum": 0, "maximum": 1},
        "top_p": {"exclusiveMinimum": 0, "maximum": 1},
        "model": {"minLength": 1},
        "messages": {"minItems": 1},
        "max_tokens": {"minimum": 1},
    },
    "CountTokensRequest": {"model": {"minLength": 1}, "messages": {"minItems": 1}},
}


def _constrain(components: dict[str, Any]) -> None:
    """Add the range checks the parsers enforce, so the document says what is valid (not only the types)."""
    for name, fields in _CONSTRAINTS.items():
        props = components[name]["properties"]
        for field_name, extra in fields.items():
            prop = props[field_name]
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") != "null":
                    branch.update(extra)


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (built once)."""
    _, components = msgspec.json.schema_components(
        [ChatCompletionRequest, CompletionRequest, ResponsesRequest, MessagesRequest, CountTokensRequest], ref_template=REF
    )
    _constrain(components)
    components.update(_error_schemas())
    bearer = [{"bearer": []}]
    either = [{"bearer": []}, {"x-api-key": []}]
    model_param = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Darkbloom consumer API", "version": __version__},
        "paths": {
            "/v1/chat/completions": _inference(
                "OpenAI chat completions (stream or not)",
                "ChatCompletionRequest",
                "ChatCompletion",
                "OpenAIError",
                bearer,
            ),
            "/v1/completions": _inference(
                "OpenAI legacy text completions", "CompletionRequest", "TextCompletion", "OpenAIError", bearer
            ),
            "/v1/responses": _inference("OpenAI Responses API", "ResponsesRequest", "Response", "OpenAIError", bearer),
            "/v1/messages": _inference(
                "Anthropic Messages API", "MessagesRequest", "AnthropicMessage", "AnthropicError", either
            ),
            "/v1/messages/count_tokens": {
                "post": {
                    "summary": "Anthropic token counting: the prompt as a node serving the model renders it (free)",
                    "security": either,
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CountTokensRequest")}}},
                    "responses": _responses("AnthropicTokenCount", "AnthropicError", stream=False),
                }
            },
            "/v1/models": _get("Models served by connected nodes", "ModelList"),
            "/v1/models/capacity": _get(
                "Per model: nodes, free and busy slots, queued requests, estimated wait", "CapacityList"
            ),
            "/v1/models/{model}": _get("One served model", "Model", model_param),
            "/v1/balance": _get("The caller's balance in integer micro-USD", "Balance"),
            "/v1/usage": _get("One row per settled request: tokens, cost, node", "List"),
            "/v1/pricing": _get("Price per model per million input and output tokens (unpriced = free)", "List"),
            "/v1/providers/keys": _get(
                "Attested nodes' X25519 keys with their signed bundles, for sealing to them",
                "List",
                [{"name": "model", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}],
            ),
            "/v1/receipts/{request_id}": _get(
                "The node-signed receipt of a finished request",
                "Receipt",
                [{"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi_document())
