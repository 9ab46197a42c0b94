"""Three real nodes, one killed mid-stream: every consumer gets a clean ending, and the books balance."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx

from darkbloom.testing import Proc, start, wait_model
from tests.server.routing.conftest import live_coordinator

PROMPT = [{"role": "user", "content": "tell me a long story"}]


def _stream(base: str, key: str, model: str, out: dict, started: threading.Event) -> None:  # type: ignore[type-arg]
    events: list[str] = []
    try:
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": model, "messages": PROMPT, "stream": True, "max_tokens": 1200, "temperature": 0},
            timeout=120,
        ) as resp:
            out["status"] = resp.status_code
            out["request_id"] = resp.headers.get("x-request-id")
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        started.set()
    finally:
        out["events"] = events
        started.set()


def _ending(events: list[str]) -> str:
    """``completed`` (a finish_reason then exactly one [DONE]) or ``error`` (one error event, no [DONE])."""
    if events and events[-1] == "[DONE]":
        assert events.count("[DONE]") == 1
        finishes = [json.loads(e)["choices"][0].get("finish_reason") for e in events[:-1] if json.loads(e).get("choices")]
        assert finishes[-1] in ("stop", "length")
        return "completed"
    last = json.loads(events[-1])
    assert "[DONE]" not in events and last["error"]["message"] == "provider disconnected"
    return "error"


def test_node_killed_mid_stream_with_three_nodes_up(tmp_path: Path, e2e_model_dir: Path) -> None:
    for live in live_coordinator(tmp_path):
        nodes: list[Proc] = []
        try:
            for i in range(3):
                home = tmp_path / f"node{i}"
                nodes.append(start(["node", "--coordinator", live.base_url, "--model", str(e2e_model_dir), "--home", str(home)], home / "node.log"))
            deadline = time.monotonic() + 120
            while len(live.fleet.registry.nodes) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(live.fleet.registry.nodes) == 3, "\n".join(p.text() for p in nodes)
            model = "tiny-e2e"
            wait_model(live.base_url, live.key, model)

            outs: list[dict] = [{} for _ in range(6)]  # type: ignore[type-arg]
            started = [threading.Event() for _ in outs]
            threads = [threading.Thread(target=_stream, args=(live.base_url, live.key, model, o, s), daemon=True) for o, s in zip(outs, started)]
            for t in threads:
                t.start()
            for s in started:
                assert s.wait(60)
            # Kill the node carrying the most streams right now.
            busiest = max(live.fleet.links.values(), key=lambda link: len(link.requests))
            assert busiest.requests, "no stream in flight to interrupt"
            victim = next(p for p in nodes if re.search(rf"as {re.escape(busiest.node_id)}\b", p.text()))
            victim.kill()
            for t in threads:
                t.join(120)
            endings = [_ending(o["events"]) for o in outs]
            assert all(o["status"] == 200 for o in outs)
            assert "error" in endings, "the killed node's streams must end with an error event"

            # The fleet routes around the dead node: new requests complete on the other two.
            for _ in range(4):
                r = live.post({"model": model, "messages": PROMPT, "max_tokens": 4}, timeout=60)
                assert r.status_code == 200, r.text
            # Books: each admitted request settled exactly once, as its consumer saw it; nothing left reserved.
            deadline = time.monotonic() + 10
            while len(live.hook.settled) < 10 and time.monotonic() < deadline:
                time.sleep(0.05)
            settled = {s[0]: s[1] for s in live.hook.settled}
            assert len(live.hook.settled) == len(settled) == len(live.hook.admitted) == 10
            for o, ending in zip(outs, endings):
                assert settled[o["request_id"]] == ("completed" if ending == "completed" else "failed")
            assert live.fleet.state.reservations == {} and live.fleet.inflight == {}
            assert busiest.node_id not in live.fleet.registry.nodes
        finally:
            for p in nodes:
                p.stop()
