"""Structured output: the JSON-schema grammar that the coordinator checks and the node enforces.

Both sides compile a schema with llguidance (the constrained-decoding library
that vLLM, SGLang and llama.cpp use) under the same options: the coordinator
to refuse a schema no node could enforce before anything is held or routed
(in a worker thread, so a large schema never stalls the relay), the node to
build the token mask that keeps the answer inside the grammar
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

MAX_SCHEMA_CHARS = 131_072
"""The largest schema (or forced call's tools) as JSON text: compiling one this size takes tens of
milliseconds, and the node does it between decode steps. OpenAI caps a schema's strings at 120,000
characters in all."""

# Between JSON tokens: nothing, one space, or a line break and up to 20 columns of indent. Compact
# and pretty-printed JSON both fit; a model that keeps sampling whitespace (JSON mode's classic
# failure) cannot fill max_tokens with it.
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": True, "whitespace_pattern": r"[ ]|\r?\n[ \t]{0,20}"}


def grammar(schema: str) -> str:
    """The llguidance grammar for a JSON schema given as JSON text."""
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)


def schema_error(schema: str) -> str:
    """Why ``schema`` (JSON text) cannot be enforced; ``""`` when it can.

    Unknown types, formats and unresolvable ``$ref`` pointers are errors, not
    ignored: a constraint silently dropped would break the caller's parser.
    Compiling takes milliseconds for a large schema (llguidance lets go of
    the GIL meanwhile): the coordinator runs it in a worker thread
    (``check_schema``).
    """
    from llguidance import LLMatcher

    try:
        return LLMatcher.validate_grammar(grammar(schema))
    except ValueError as exc:
        return str(exc)


async def check_schema(schema: str | None, param: str) -> None:
    """``schema_error`` off the event loop.

    Raises:
        RequestError: 400 naming ``param`` with the compiler's reason.
    """
    import anyio

    from darkbloom.protocol.openai import RequestError

    if schema is None:
        return
    err = await anyio.to_thread.run_sync(schema_error, schema)
    if err:
        raise RequestError(400, f"{param} schema cannot be enforced: {err}", param=param)


def check_format(kind: str, name: str | None, schema: Any, param: str) -> None:
    """Check an OpenAI response format: ``kind`` ``text``, ``json_object`` or ``json_schema``.

    A ``json_schema`` format carries ``name`` and ``schema`` (chat's
    ``response_format.json_schema``, the Responses API's flat ``text.format``);
    ``param`` names the field in errors. Whether the schema compiles is
    ``check_schema``'s to say (it takes a thread).

    Raises:
        RequestError: 400 naming ``param`` for an unknown type, a bad name,
            or a schema that is not an object or is too large.
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
    check_schema_shape(schema, param)


def check_schema_shape(schema: Any, param: str) -> None:
    """A schema must be a JSON object (or absent: any JSON) of at most ``MAX_SCHEMA_CHARS`` characters.

    Raises:
        RequestError: 400 naming ``param``.
    """
    from darkbloom.protocol.openai import RequestError

    if schema is not None and not isinstance(schema, dict):
        raise RequestError(400, f"{param} schema must be a JSON object", param=param)
    size = len(schema_text(schema))
    if size > MAX_SCHEMA_CHARS:
        raise RequestError(
            400, f"{param} schema is too large: {size} characters of JSON, at most {MAX_SCHEMA_CHARS}", param=param
        )


def schema_text(schema: Any) -> str:
    """A schema as the JSON text nodes get (no schema: ``{}``, any JSON)."""
    return json.dumps({} if schema is None else schema, ensure_ascii=False, separators=(",", ":"))


def node_format(kind: str, schema: Any) -> tuple[str | None, str | None]:
    """A checked format (``check_format``) as ``SamplingParams``'s ``response_format`` and ``json_schema``."""
    if kind == "json_schema":
        return kind, schema_text(schema)
    return (kind, None) if kind == "json_object" else (None, None)
