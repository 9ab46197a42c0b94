"""Speculative dispatch: the first content wins, the loser is cancelled, the job is billed once."""

from __future__ import annotations

from darkbloom.protocol import Cancel, Chunk, Complete, InferenceRequest, Usage
from darkbloom.server.routing.hedging import HedgeConfig, HedgeGovernor, hedge_delay_s
from tests.server.routing.conftest import Live, StandIn, in_thread

GOOD = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_a_silent_node_is_hedged_the_hedge_wins_and_the_loser_is_cancelled(live: Live) -> None:
    a, b = StandIn(live, "node-a"), StandIn(live, "node-b")
    t, out = in_thread(lambda: live.post(GOOD))
    # Each node gets the request once: the primary first, then (after ~0.5 s of silence) the hedge.
    got = {name: node.recv(5) for name, node in (("node-a", a), ("node-b", b))}
    assert all(isinstance(f, InferenceRequest) for f in got.values())
    hedge_node = next(n for n, f in got.items() if "-h" in f.request_id)  # type: ignore[union-attr]
    primary_node = next(n for n in got if n != hedge_node)
    nodes = {"node-a": a, "node-b": b}
    hedge_req, primary_req = got[hedge_node], got[primary_node]
    nodes[hedge_node].send(Chunk(request_id=hedge_req.request_id, seq=0, text="from the hedge"))  # type: ignore[union-attr]
    nodes[hedge_node].send(Complete(request_id=hedge_req.request_id, usage=Usage(3, 3)))  # type: ignore[union-attr]
    cancel = nodes[primary_node].recv(5)
    assert isinstance(cancel, Cancel) and cancel.request_id == primary_req.request_id  # type: ignore[union-attr]
    # The loser answers late anyway: ignored, never billed.
    nodes[primary_node].send(Chunk(request_id=primary_req.request_id, seq=0, text="too late"))  # type: ignore[union-attr]
    nodes[primary_node].send(Complete(request_id=primary_req.request_id, usage=Usage(3, 9)))  # type: ignore[union-attr]
    t.join(10)
    resp = out["result"]
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "from the hedge"
    assert len(live.hook.admitted) == 1
    assert [(s[1], s[2], s[3]) for s in live.hook.settled] == [("completed", Usage(3, 3), hedge_node)]
    assert live.fleet.state.reservations == {} and live.fleet.inflight == {}
    a.close()
    b.close()


def test_the_primary_answering_first_cancels_the_hedge(live: Live) -> None:
    a, b = StandIn(live, "node-a"), StandIn(live, "node-b")
    t, out = in_thread(lambda: live.post(GOOD))
    got = {name: node.recv(5) for name, node in (("node-a", a), ("node-b", b))}
    primary_node = next(n for n, f in got.items() if "-h" not in f.request_id)  # type: ignore[union-attr]
    hedge_node = next(n for n in got if n != primary_node)
    nodes = {"node-a": a, "node-b": b}
    nodes[primary_node].send(Chunk(request_id=got[primary_node].request_id, seq=0, text="primary"))  # type: ignore[union-attr]
    assert isinstance(nodes[hedge_node].recv(5), Cancel)
    nodes[primary_node].send(Complete(request_id=got[primary_node].request_id, usage=Usage(1, 1)))  # type: ignore[union-attr]
    t.join(10)
    assert out["result"].json()["choices"][0]["message"]["content"] == "primary"
    assert [(s[1], s[3]) for s in live.hook.settled] == [("completed", primary_node)]
    a.close()
    b.close()


def test_governor_suppresses_hedging_that_does_not_win() -> None:
    gov = HedgeGovernor(HedgeConfig())
    assert not gov.allow(queue_depth=1, nodes_with_room=5)  # a queue: no hedging
    assert not gov.allow(queue_depth=0, nodes_with_room=1)  # nowhere to hedge to
    for _ in range(8):
        assert gov.allow(0, 5)
        gov.record(hedge_won=False)
    allowed = sum(gov.allow(0, 5) for _ in range(32))
    assert allowed == 2  # 1 in 16 lets the win rate be measured again
    assert hedge_delay_s(0.01, HedgeConfig()) == 0.5 and hedge_delay_s(5.0, HedgeConfig()) == 10.0
