"""Consumer authentication for the HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request

from darkbloom.aio import spawn
from darkbloom.protocol.openai import RequestError
from darkbloom.server.auth.cache import KeyCache
from darkbloom.server.auth.keys import authenticate, hash_key
from darkbloom.server.store import ApiKeyRecord, Store

log = logging.getLogger(__name__)


def bearer_key(request: Request) -> str:
    """The API key from ``Authorization: Bearer`` (or ``x-api-key``), else ``""``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip()


async def require_consumer(request: Request) -> ApiKeyRecord:
    """The caller's key record.

    Raises:
        RequestError: 401 when the key is missing, unknown or revoked.
    """
    key = bearer_key(request)
    if not key:
        raise RequestError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>' (darkbloom keys create makes one)",
            type="authentication_error",
            code="missing_api_key",
        )
    state = request.app.state
    cache: KeyCache | None = getattr(state, "key_cache", None)
    now = time.time()
    digest = hash_key(key)
    record = cache.get(digest, now) if cache is not None else None
    if record is None:
        record = await authenticate(state.store, key)
        if record is None:
            raise RequestError(401, "Invalid or revoked API key", type="authentication_error", code="invalid_api_key")
        if cache is not None:
            cache.put(digest, record, now)
    if cache is None or cache.should_touch(record.key_id, now):
        _touch(state.store, record.key_id, now)
    return record


def _touch(store: Store, key_id: str, now: float) -> None:
    """Record when the key was last used, behind the request: it need not wait for that write."""
    spawn(store.touch_api_key(key_id, now), _touched)


def _touched(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("could not record when an API key was last used: %r", exc)
