"""schemathesis against ``/openapi.json`` on a real coordinator with a real node: no request earns a 5xx.

Valid and deliberately invalid requests are generated from the document the
server publishes and sent with a valid key; each must get a 2xx or 4xx. Every
other generated inference body is pointed at the served model (with a small
token limit), so fuzzed sampling options also travel to the node and back.
"""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from e2e.conftest import Network

LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_turn = itertools.count()


@pytest.fixture(scope="module")
def api_schema(shared_network: Network) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{shared_network.base_url}/openapi.json")
    schema.config.generation.update(
        modes=[schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
        max_examples=25,
        deterministic=True,
        database="none",
    )
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx(case: schemathesis.Case, shared_network: Network) -> None:
    body = case.body
    if case.method == "POST" and isinstance(body, dict) and "model" in body and next(_turn) % 2:
        body["model"] = shared_network.model
        for name in LIMITS:
            if isinstance(body.get(name), int) and not isinstance(body[name], bool):
                body[name] = min(body[name], 8)
        limit = {"/v1/chat/completions": "max_tokens", "/v1/responses": "max_output_tokens"}.get(case.path)
        if limit and body.get(limit) is None and body.get("max_completion_tokens") is None:
            body[limit] = 8  # the defaults (256) would make this test slow, not better
    response = case.call(
        base_url=shared_network.base_url, headers={"Authorization": f"Bearer {shared_network.key}"}, timeout=60
    )
    assert response.status_code < 500, (
        f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}\n{body!r}"
    )
