"""Stopping a node (`darkbloom node stop`, a supervisor's SIGTERM) while it is generating."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from e2e.conftest import Network


# SIGTERM is `darkbloom node stop` (or a supervisor); SIGINT is a provider pressing Ctrl-C on a foreground node.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_a_stop_signal_lets_the_nodes_running_request_finish_then_it_exits(network: Network, sig: signal.Signals) -> None:
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
                    node.popen.send_signal(sig)
    rc = node.popen.wait(timeout=30)
    assert rc == 0, f"the node exited with {rc}:\n{node.text()[-3000:]}"
    assert not any("error" in e for e in events), events[-3:]
    assert events[-1] == {"done": True}
    finish = [e["choices"][0]["finish_reason"] for e in events if e.get("choices") and e["choices"][0]["finish_reason"]]
    assert finish in (["length"], ["stop"]), events[-3:]
    again = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert f"stopping: finishing 1 request(s) in flight (up to 10 s; {again} again to stop now)" in node.text()
    # The coordinator heard it leave in order: no request of it failed.
    assert "provider disconnected" not in network.coordinator.text()


def test_a_second_ctrl_c_stops_the_node_at_once(network: Network) -> None:
    node = network.nodes[0]
    body = {"model": network.model, "messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 1000}
    lines: list[str] = []  # the answer may be whole: the tiny model can finish before the signals land
    with httpx.stream(
        "POST", f"{network.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {network.key}"}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: "):
                lines.append(line)
                if len(lines) == 1:
                    node.popen.send_signal(signal.SIGINT)
                    node.popen.send_signal(signal.SIGINT)
    rc = node.popen.wait(timeout=10)
    assert rc == 0, f"the node exited with {rc}:\n{node.text()[-3000:]}"
    assert "Traceback" not in node.text()
    assert "(up to 10 s; Ctrl-C again to stop now)" in node.text()
