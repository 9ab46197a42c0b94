"""A node that says it is stopping (heartbeat status ``draining``) finishes what it has and gets nothing new."""

from __future__ import annotations

import time

import httpx

from darkbloom.protocol import Complete, Heartbeat, InferenceRequest, Usage
from tests.server.routing.conftest import Live, StandIn, in_thread


def _until(cond, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _models(live: Live) -> list[str]:
    return [m["id"] for m in httpx.get(f"{live.base_url}/v1/models", headers=live.auth, timeout=10).json()["data"]]


def test_a_draining_node_gets_no_new_requests_and_comes_back_when_it_says_so(live: Live) -> None:
    a, b = StandIn(live, "a"), StandIn(live, "b")
    a.send(Heartbeat(status="draining"))
    _until(lambda: live.fleet.registry.nodes["a"].draining)
    for _ in range(6):
        t, out = in_thread(lambda: live.post({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
        req = b.recv()
        assert isinstance(req, InferenceRequest)
        b.send(Complete(request_id=req.request_id, usage=Usage(prompt_tokens=3, completion_tokens=1)))
        t.join(10)
        assert out["result"].status_code == 200
    assert a.try_recv(0.3) is None, "a draining node was sent a request"
    assert _models(live) == ["m1"]  # b still serves it

    b.send(Heartbeat(status="draining"))
    _until(lambda: live.fleet.registry.nodes["b"].draining)
    assert _models(live) == []  # nobody takes new work for m1 now
    a.send(Heartbeat(status="serving"))  # changed its mind (a cancelled stop): routable again
    _until(lambda: not live.fleet.registry.nodes["a"].draining)
    assert _models(live) == ["m1"]
    a.close()
    b.close()
