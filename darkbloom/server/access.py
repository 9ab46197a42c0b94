"""Every HTTP request gets an id, an ``X-Timing`` header, one access-log line, and a count in the metrics.

A pure ASGI middleware (it never buffers a body, so streaming responses pass
straight through). It gives the request a fresh id in the logging context; an
inference route replaces it with the job's own id when the gateway admits the
job, and whatever id is current when the response starts goes back to the
consumer in ``X-Request-Id``, on errors too. A response that carries no
``X-Timing`` of its own (inference adapters write the full one) gets
``{"total": µs}``, the time from receipt to its headers.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from darkbloom.logging_setup import request_id_var

if TYPE_CHECKING:
    from darkbloom.server.metrics import CoordinatorMetrics

log = logging.getLogger("darkbloom.access")

# Ids for requests that get no job id of their own (an inference route replaces it with the job's,
# a uuid4): unique per process start and cheap, with no system call per request.
_BOOT = uuid.uuid4().hex[:12]
_SEQ = itertools.count(1)

# A consumer's own correlation id is logged beside ours when it is this well-behaved.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Scrapes and probes every few seconds would drown the log at INFO.
_QUIET = frozenset({"/metrics", "/health", "/v1/stats"})


def route_label(scope: Scope) -> str:
    """The matched route's path template (bounded label values), else ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Request id, access log and HTTP metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: CoordinatorMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = request_id_var.set(f"req-{_BOOT}{next(_SEQ):08x}")
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                has_id = has_timing = False
                for k, _ in headers:  # Starlette writes header names in lower case
                    if k == b"x-request-id":
                        has_id = True
                    elif k == b"x-timing":
                        has_timing = True
                if not has_id:
                    headers.append((b"x-request-id", (request_id_var.get() or "").encode("latin-1")))
                if not has_timing:
                    total = max(0, round((time.perf_counter() - started) * 1e6))
                    headers.append((b"x-timing", b'{"total":%d}' % total))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            if self.metrics is not None:
                self.metrics.observe_http(route, scope.get("method", ""), status, elapsed)
            fields: dict[str, object] = {
                "method": scope.get("method", ""),
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
            }
            client_id = _client_request_id(scope)
            if client_id:
                fields["client_request_id"] = client_id
            log.log(logging.DEBUG if route in _QUIET else logging.INFO, "http request", extra=fields)
            request_id_var.reset(token)


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _CLIENT_ID.match(text) else None
    return None
