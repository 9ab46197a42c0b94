"""``GET /metrics``: the coordinator's Prometheus exposition.

Open by default, like most exporters (it carries counts and latencies, no ids,
prompts or keys). Set ``$DARKBLOOM_METRICS_TOKEN`` to require
``Authorization: Bearer <token>`` from the scraper.
"""

from __future__ import annotations

import hmac
import os

from starlette.requests import Request
from starlette.responses import Response

from darkbloom.protocol.openai import RequestError
from darkbloom.server.api.auth import bearer_key
from darkbloom.server.api.errors import error_response
from darkbloom.server.metrics import CONTENT_TYPE, CoordinatorMetrics


async def metrics(request: Request) -> Response:
    token = os.environ.get("DARKBLOOM_METRICS_TOKEN", "")
    if token and not hmac.compare_digest(bearer_key(request).encode(), token.encode()):
        return error_response(
            RequestError(
                401,
                "metrics need 'Authorization: Bearer <DARKBLOOM_METRICS_TOKEN>'",
                type="authentication_error",
                code="unauthorized",
            )
        )
    registry: CoordinatorMetrics = request.app.state.metrics
    return Response(registry.exposition(), media_type=CONTENT_TYPE)
