"""The HTTP client against a real coordinator socket: streamed chat, the event streams, clear failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from darkbloom.client.http import (
    ApiError,
    DarkbloomClient,
    NotAuthorised,
    StreamEnd,
    StreamStart,
    TextDelta,
    Unreachable,
    api_base,
    sse_events,
)
from darkbloom.testing import free_port
from tests.client.conftest import Served, scripted_node


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


@pytest.mark.anyio
async def test_sse_parser_handles_names_comments_and_multiline_data() -> None:
    got = [
        e async for e in sse_events(_lines(": keepalive", "event: node", 'data: {"a":', "data: 1}", "", "data: [DONE]"))
    ]
    assert got == [("node", '{"a":\n1}'), ("message", "[DONE]")]


def test_api_base_accepts_what_people_paste() -> None:
    assert api_base("http://h:1/v1/") == "http://h:1"
    assert api_base("127.0.0.1:8420") == "http://127.0.0.1:8420"
    assert api_base("https://x.example/v1") == "https://x.example"


async def _next_of(
    events: AsyncIterator[tuple[str, dict[str, Any]]], kind: str, sub: str | None = None
) -> dict[str, Any]:
    """The next event of ``kind`` (periodic snapshots and heartbeats in between are skipped)."""
    async for name, data in events:
        if name == kind and (sub is None or data.get("kind") == sub):
            return data
    raise AssertionError(f"stream ended before a {kind} event")


@pytest.mark.anyio
async def test_admin_stream_follows_nodes_and_requests(served: Served) -> None:
    async with DarkbloomClient(served.url, api_key=served.key, admin_key=served.admin_key) as client:
        events = client.events()
        first = await _next_of(events, "snapshot")
        assert first["view"] == "admin" and first["nodes"] == []
        async with scripted_node(served.url, reply=("Hel", "lo", "!")):
            joined = await _next_of(events, "node", "joined")
            assert joined["node"] == "node-scripted" and joined["view"]["models"] == ["m1"]
            pieces = [e async for e in client.chat_stream("m1", [{"role": "user", "content": "hi"}])]
            done = await _next_of(events, "request")
        left = await _next_of(events, "node", "left")
        assert len(served.app.state.events.subscribers) == 1
        await events.aclose()
        # Hanging up ends the stream on the coordinator too: no subscriber is left behind.
        deadline = asyncio.get_running_loop().time() + 10
        while served.app.state.events.subscribers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert not served.app.state.events.subscribers
    assert isinstance(pieces[0], StreamStart) and pieces[0].privacy == "coordinator-visible"
    assert "".join(p.text for p in pieces if isinstance(p, TextDelta)) == "Hello!"
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 0}}
    assert pieces[-1] == StreamEnd("stop", usage)
    assert done["id"] == pieces[0].request_id and done["node"] == "node-scripted" and done["completion_tokens"] == 3
    assert left["node"] == "node-scripted" and left["view"] is None


@pytest.mark.anyio
async def test_public_stream_tells_of_joins_without_node_ids(served: Served) -> None:
    seen: list[str] = []
    async with DarkbloomClient(served.url, api_key=served.key) as client:
        events = client.events()
        first = await _next_of(events, "snapshot")
        assert first["view"] == "public" and first["stats"]["active_nodes"] == 0
        async with scripted_node(served.url, node_id="node-hidden"):
            async for name, data in events:
                seen.append(json.dumps(data))
                if name == "snapshot" and data["stats"]["active_nodes"] == 1:
                    break
            [e async for e in client.chat_stream("m1", [{"role": "user", "content": "hi"}])]
            request = await _next_of(events, "request")
        await events.aclose()
    assert request["status"] == 200 and "node" not in request and "id" not in request
    assert not any("node-hidden" in s for s in seen)


@pytest.mark.anyio
async def test_failures_come_out_as_clear_errors(served: Served) -> None:
    async with DarkbloomClient(served.url, api_key="dbk-wrong") as client:
        with pytest.raises(NotAuthorised, match="Invalid or revoked API key"):
            await client.models()
        with pytest.raises(NotAuthorised, match="admin credential"):
            [e async for e in client.events(admin=True)]
    async with DarkbloomClient(served.url, api_key=served.key, admin_key=served.key) as client:
        with pytest.raises(NotAuthorised) as info:
            await client.fleet()
        assert info.value.status == 403
        with pytest.raises(ApiError) as err:
            [e async for e in client.chat_stream("nobody-serves-this", [{"role": "user", "content": "hi"}])]
        assert err.value.status == 404 and err.value.code == "model_not_found"
    async with DarkbloomClient(f"http://127.0.0.1:{free_port()}", api_key=served.key) as client:
        with pytest.raises(Unreachable, match="cannot reach the coordinator"):
            await client.models()
