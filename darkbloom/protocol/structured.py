"""Structured output: the JSON-schema grammar that the coordinator checks and the node enforces.

Both sides compile a schema with llguidance (the constrained-decoding library
that vLLM, SGLang and llama.cpp use) under the same options: the coordinator
to refuse a schema no node could enforce before anything is held or routed,
the node to build the token mask that keeps the answer inside the grammar
(``darkbloom.node.engine.constrain``).
"""

from __future__ import annotations

import json
import re
from typing import Any

JSON_OBJECT_SCHEMA = '{"type":"object"}'
"""What ``response_format: {"type": "json_object"}`` means: any JSON object."""

SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""OpenAI's rule for ``json_schema.name``."""

# Between JSON tokens: nothing, one space, or a line break and up to 20 columns of indent. Compact
# and pretty-printed JSON both fit; a model that keeps sampling whitespace (JSON mode's classic
# failure) cannot fill max_tokens with it.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": True, "whitespace_pattern": r"[ ]|\r?\n[ \t]{0,20}"}


def grammar(schema: str) -> str:
    """The llguidance grammar for a JSON schema given as JSON text."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def schema_error(schema: Any) -> str:
    """Why ``schema`` (a decoded JSON value) cannot be enforced; ``""`` when it can.

    Unknown types, formats and unresolvable ``$ref`` pointers are errors, not
    ignored: a constraint silently dropped would break the caller's parser.
    """
    from llguidance import LLMatcher

    if not isinstance(schema, (dict, bool)):
        return "a JSON schema must be an object"
    try:
        return LLMatcher.validate_grammar(grammar(json.dumps(schema)))
    except ValueError as exc:
        return str(exc)


def check_format(kind: str, name: str | None, schema: Any, param: str) -> None:
    """Check an OpenAI response format: ``kind`` ``text``, ``json_object`` or ``json_schema``.

    A ``json_schema`` format carries ``name`` and ``schema`` (chat's
    ``response_format.json_schema``, the Responses API's flat ``text.format``);
    ``param`` names the field in errors.

    Raises:
        RequestError: 400 naming ``param`` for an unknown type, a bad name,
            or a schema no node could enforce.
    """
    from darkbloom.protocol.openai import RequestError

    if kind in ("text", "json_object"):
        return
    if kind != "json_schema":
        raise RequestError(
            400, f"{param} type {kind!r} is invalid: expected 'text', 'json_object' or 'json_schema'", param=param
        )
    if name is None or not SCHEMA_NAME.fullmatch(name):
        raise RequestError(
            400, f"{param} needs a name of 1 to 64 letters, digits, '_' or '-' for type 'json_schema'", param=param
        )
    err = schema_error({} if schema is None else schema)
    if err:
        raise RequestError(400, f"{param} schema cannot be enforced: {err}", param=param)


def node_format(kind: str, schema: Any) -> tuple[str | None, str | None]:
    """A checked format (``check_format``) as ``SamplingParams``'s ``response_format`` and ``json_schema``."""
    if kind == "json_schema":
        return kind, json.dumps({} if schema is None else schema, ensure_ascii=False, separators=(",", ":"))
    return (kind, None) if kind == "json_object" else (None, None)
