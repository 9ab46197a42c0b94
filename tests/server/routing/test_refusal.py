"""A node's capacity refusal before any content: another node takes the request, or the consumer gets 429."""

from __future__ import annotations

import time

from darkbloom.protocol import Chunk, Complete, Error, InferenceRequest, Usage
from tests.server.routing.conftest import Live, StandIn, in_thread

GOOD = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _refuse(node: StandIn, req: InferenceRequest) -> None:
    node.send(Error(message="KV budget full", code="capacity", status=429, request_id=req.request_id, feasible_after_ms=7000))


def test_a_refusal_fails_over_to_another_node(live: Live) -> None:
    a, b = StandIn(live, "node-a"), StandIn(live, "node-b")
    t, out = in_thread(lambda: live.post(GOOD))
    nodes = {"node-a": a, "node-b": b}
    deadline = time.monotonic() + 5
    while not live.fleet.inflight:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    first_node = next(iter(live.fleet.inflight.values())).node_id
    other_node = "node-b" if first_node == "node-a" else "node-a"
    req = nodes[first_node].recv()
    _refuse(nodes[first_node], req)  # type: ignore[arg-type]
    retry = nodes[other_node].recv()
    assert isinstance(retry, InferenceRequest)
    nodes[other_node].send(Chunk(request_id=retry.request_id, seq=0, text="served elsewhere"))
    nodes[other_node].send(Complete(request_id=retry.request_id, usage=Usage(1, 1)))
    t.join(10)
    assert out["result"].status_code == 200
    assert out["result"].json()["choices"][0]["message"]["content"] == "served elsewhere"
    assert [(s[1], s[3]) for s in live.hook.settled] == [("completed", other_node)]
    # The refusing node's breaker did not count the refusal as a fault.
    assert all(ok for _, ok in live.fleet.registry.nodes[first_node].breaker.outcomes)
    a.close()
    b.close()


def test_a_refusal_with_nowhere_else_to_go_is_a_429_with_the_nodes_retry_after(live: Live) -> None:
    node = StandIn(live, "solo")
    t, out = in_thread(lambda: live.post(GOOD))
    _refuse(node, node.recv())  # type: ignore[arg-type]
    t.join(10)
    resp = out["result"]
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert [s[1] for s in live.hook.settled] == ["failed"]
    node.close()
