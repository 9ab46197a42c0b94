"""A consumer that closes its stream gets the node's work cancelled at once, not at the next token."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

from darkbloom.protocol import Cancel, Chunk, Complete, InferenceRequest, Usage
from tests.server.routing.conftest import Live, StandIn, in_thread


def _open_stream(live: Live) -> socket.socket:
    body = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    url = urlsplit(live.base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {live.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def _assert_settled_once_as_cancelled(live: Live, node_id: str) -> None:
    deadline = time.monotonic() + 5
    while not live.hook.settled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(s[1], s[3]) for s in live.hook.settled] == [("cancelled", node_id)]


def test_closing_the_stream_cancels_on_the_node_without_waiting_for_another_token(live: Live) -> None:
    node = StandIn(live, "solo")
    t, out = in_thread(lambda: _open_stream(live))
    req = node.recv()
    assert isinstance(req, InferenceRequest)
    node.send(Chunk(request_id=req.request_id, seq=0, text="only one"))
    t.join(10)
    sock = out["result"]
    seen = b""
    while b"only one" not in seen:
        seen += sock.recv(4096)
    closed = time.monotonic()
    sock.close()  # the node sends nothing more; only the disconnect itself can trigger the cancel
    cancel = node.recv(5)
    assert isinstance(cancel, Cancel) and cancel.request_id == req.request_id
    assert time.monotonic() - closed < 5
    _assert_settled_once_as_cancelled(live, "solo")
    node.close()


def test_hanging_up_before_the_first_token_cancels_on_the_node(live: Live) -> None:
    node = StandIn(live, "solo")
    t, out = in_thread(lambda: _open_stream(live))
    req = node.recv()
    assert isinstance(req, InferenceRequest)
    t.join(10)
    out["result"].close()  # gone while the node is still prefilling: no token has been sent
    cancel = node.recv(5)
    assert isinstance(cancel, Cancel) and cancel.request_id == req.request_id
    _assert_settled_once_as_cancelled(live, "solo")
    node.close()


def test_hanging_up_while_queued_leaves_the_queue_and_the_node_never_sees_it(live: Live) -> None:
    node = StandIn(live, "solo", max_concurrency=1)
    t_a, out_a = in_thread(lambda: _open_stream(live))
    req_a = node.recv()
    assert isinstance(req_a, InferenceRequest)
    t_b, out_b = in_thread(lambda: _open_stream(live))
    t_a.join(10)
    t_b.join(10)
    deadline = time.monotonic() + 5
    while live.fleet.state.depth("m1") < 1:
        assert time.monotonic() < deadline, "the second request never queued"
        time.sleep(0.01)
    out_b["result"].close()  # gives up while waiting for a slot
    while live.fleet.state.depth("m1") > 0:
        assert time.monotonic() < deadline + 5, "the abandoned request stayed queued"
        time.sleep(0.01)
    node.send(Chunk(request_id=req_a.request_id, seq=0, text="done"))
    node.send(Complete(request_id=req_a.request_id, usage=Usage(1, 1)))
    assert node.try_recv(0.5) is None  # the slot freed, and nobody was waiting for it any more
    out_a["result"].close()
    node.close()
