"""A small async HTTP client for the coordinator: models, streamed chat, and the dashboard API.

Both terminal apps use it. Failures come out as three exceptions a user
interface can word clearly: ``Unreachable`` (no answer at that URL),
``NotAuthorised`` (401/403: missing, wrong or not-admin key) and ``ApiError``
(anything else the coordinator refused, with its message).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(10.0, read=None)
"""Connecting fails fast; a stream may stay quiet for as long as the model thinks."""


class ClientError(Exception):
    """Base of the errors this client raises."""


class Unreachable(ClientError):
    """Nothing answered at the coordinator's URL (refused, DNS, TLS, timeout)."""


class NotAuthorised(ClientError):
    """The coordinator refused the key (401) or it lacks the rights needed (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiError(ClientError):
    """Any other refusal, carrying the coordinator's error message and code."""

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class StreamStart:
    """A chat stream began: who is answering and how private it is (from the response headers)."""

    request_id: str
    privacy: str
    provider: str | None = None
    trust_level: str | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The stream finished normally; ``usage`` is the coordinator's exact count when it sent one."""

    finish_reason: str | None
    usage: dict[str, Any] | None = None


ChatEvent = StreamStart | TextDelta | StreamEnd


def api_base(url: str) -> str:
    """``http://host:port``, ``.../v1`` or ``.../v1/`` -> ``http://host:port`` (the client adds ``/v1``)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _error_message(resp: httpx.Response) -> tuple[str, str | None]:
    try:
        err = resp.json().get("error", {})
        return str(err.get("message") or resp.reason_phrase), err.get("code")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return f"{resp.status_code} {resp.reason_phrase}", None


def _raise_for(resp: httpx.Response, url: str) -> None:
    if resp.status_code < 400:
        return
    message, code = _error_message(resp)
    if resp.status_code in (401, 403):
        raise NotAuthorised(f"{url} refused the key: {message}", resp.status_code)
    raise ApiError(message, resp.status_code, code)


def _header(resp: httpx.Response, *names: str) -> str | None:
    for name in names:
        value = resp.headers.get(name)
        if value:
            return value
    return None


@dataclass
class _Sse:
    """Accumulates one server-sent event's lines."""

    event: str = "message"
    data: list[str] = field(default_factory=list)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """Parse server-sent events: ``(event name, data)`` per blank-line-terminated event."""
    cur = _Sse()
    async for line in lines:
        if not line:
            if cur.data:
                yield cur.event, "\n".join(cur.data)
            cur = _Sse()
        elif line.startswith(":"):
            continue  # a comment (keepalive)
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                cur.event = value
            elif name == "data":
                cur.data.append(value)
    if cur.data:
        yield cur.event, "\n".join(cur.data)


class DarkbloomClient:
    """The coordinator as the terminal apps see it.

    Args:
        url: Coordinator base URL (with or without ``/v1``).
        api_key: A consumer key, for models, chat and the public network view.
        admin_key: The admin credential, for the fleet view and its events.
        transport: An httpx transport (tests may pass one; default: the network).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        admin_key: str | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        sealed: bool = False,
    ) -> None:
        self.url = api_base(url)
        self.api_key = api_key
        self.admin_key = admin_key
        self.sealed = sealed
        """Seal chat requests end to end to attested nodes (the coordinator relays ciphertext)."""
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> DarkbloomClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def admin(self) -> bool:
        return bool(self.admin_key)

    def _auth(self, admin: bool) -> dict[str, str]:
        key = self.admin_key if admin else self.api_key
        if not key:
            what = (
                "an admin credential (--admin-key or DARKBLOOM_ADMIN_KEY)"
                if admin
                else "an API key (--api-key or DARKBLOOM_API_KEY)"
            )
            raise NotAuthorised(f"no key given: {self.url} needs {what}", 401)
        return {"Authorization": f"Bearer {key}"}

    async def _get_json(self, path: str, admin: bool) -> Any:
        headers = self._auth(admin)
        try:
            resp = await self._http.get(path, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the coordinator at {self.url}: {exc or type(exc).__name__}") from None
        _raise_for(resp, self.url)
        return resp.json()

    async def models(self) -> list[str]:
        """Model ids some connected node serves now."""
        data = await self._get_json("/v1/models", admin=False)
        return [m["id"] for m in data.get("data", [])]

    async def fleet(self) -> dict[str, Any]:
        """The admin fleet view (needs the admin credential)."""
        return await self._get_json("/v1/admin/fleet", admin=True)  # type: ignore[no-any-return]

    async def network(self) -> dict[str, Any]:
        """The public network view (any consumer key)."""
        return await self._get_json("/v1/network", admin=False)  # type: ignore[no-any-return]

    async def events(self, admin: bool | None = None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Follow the dashboard event stream: ``(kind, data)`` with kind snapshot, request or node.

        Admin stream when an admin key is set (or ``admin=True``), else the public one.
        """
        admin = self.admin if admin is None else admin
        path = "/v1/admin/events" if admin else "/v1/network/events"
        headers = {**self._auth(admin), "Accept": "text/event-stream"}
        try:
            async with self._http.stream("GET", path, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp, self.url)
                async for name, data in sse_events(resp.aiter_lines()):
                    yield name, json.loads(data)
        except httpx.HTTPError as exc:
            raise Unreachable(f"lost the coordinator at {self.url}: {exc or type(exc).__name__}") from None

    async def chat_stream(
        self,
        model: str,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> AsyncIterator[ChatEvent]:
        """Stream one chat completion: a ``StreamStart``, ``TextDelta`` pieces, then a ``StreamEnd``.

        Closing the iterator early (stop generation) closes the connection; the
        coordinator then cancels the request on its node.

        Raises:
            ApiError: the coordinator refused the request, or it failed mid-stream.
        """
        body: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if seed is not None:
            body["seed"] = seed
        if self.sealed:
            async for event in self._sealed_stream(body):
                yield event
            return
        headers = self._auth(admin=False)
        try:
            async with self._http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp, self.url)
                yield StreamStart(
                    request_id=resp.headers.get("x-request-id", ""),
                    privacy=_header(resp, "x-darkbloom-privacy") or "coordinator-visible",
                    provider=_header(resp, "x-provider-id", "x-darkbloom-node"),
                    trust_level=_header(resp, "x-provider-trust-level", "x-provider-trust"),
                )
                finish: str | None = None
                usage: dict[str, Any] | None = None
                async for _, data in sse_events(resp.aiter_lines()):
                    if data == "[DONE]":
                        yield StreamEnd(finish, usage)
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        raise ApiError(str(err.get("message", "the stream failed")), 502, err.get("code"))
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield TextDelta(text)
                        finish = choice.get("finish_reason") or finish
                raise ApiError("the stream ended without [DONE]", 502, "incomplete_stream")
        except httpx.HTTPError as exc:
            raise Unreachable(f"lost the coordinator at {self.url}: {exc or type(exc).__name__}") from None

    async def _sealed_stream(self, body: dict[str, Any]) -> AsyncIterator[ChatEvent]:
        """``chat_stream`` sealed: the prompt and answer are encrypted between this process and the node."""
        from darkbloom.client.sealing import SealedClient, SealedDone, SealedError, SealedRequestError, SealedStart

        sealer = SealedClient(self.url, self._auth(admin=False)["Authorization"].removeprefix("Bearer "), http=self._http)
        try:
            async for event in sealer.chat(body):
                if isinstance(event, SealedStart):
                    yield StreamStart(
                        request_id=event.request_id,
                        privacy="sealed",
                        provider=event.headers.get("x-provider-id"),
                        trust_level=event.headers.get("x-provider-trust-level"),
                    )
                elif isinstance(event, SealedDone):
                    yield StreamEnd(event.finish_reason, event.usage)
                    return
                elif event.text:
                    yield TextDelta(event.text)
        except SealedRequestError as exc:
            if exc.status in (401, 403):
                raise NotAuthorised(f"{self.url} refused the key: {exc}", exc.status) from None
            raise ApiError(str(exc), exc.status, exc.body.get("error", {}).get("code")) from None
        except SealedError as exc:
            raise ApiError(f"sealed mode: {exc} (use --no-seal to let the coordinator see the request)", 503, "sealed") from None
        except httpx.HTTPError as exc:
            raise Unreachable(f"lost the coordinator at {self.url}: {exc or type(exc).__name__}") from None
