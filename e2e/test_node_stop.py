"""Stopping a node (`darkbloom node stop`, a supervisor's SIGTERM) while it is generating."""

from __future__ import annotations

import json
import signal

import httpx

from e2e.conftest import Network


def test_sigterm_lets_the_nodes_running_request_finish_then_it_exits(network: Network) -> None:
    node = network.nodes[0]
    body = {"model": network.model, "messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 400}
    events: list[dict] = []  # type: ignore[type-arg]
    with httpx.stream(
        "POST", f"{network.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {network.key}"}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line == "data: [DONE]":
                events.append({"done": True})
            elif line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 1:
                    node.popen.send_signal(signal.SIGTERM)
    rc = node.popen.wait(timeout=30)
    assert rc == 0, f"the node exited with {rc}:\n{node.text()[-3000:]}"
    assert not any("error" in e for e in events), events[-3:]
    assert events[-1] == {"done": True}
    finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices") and e["choices"][0]["finish_reason"]]
    assert finish in (["length"], ["stop"]), events[-3:]
    assert "stopping: finishing 1 request(s) in flight" in node.text()
    # The coordinator heard it leave in order: no request of it failed.
    assert "provider disconnected" not in network.coordinator.text()
