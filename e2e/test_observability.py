"""Operating a real network: one request id in both processes' logs, no prompt text or keys, live metrics."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from darkbloom.testing import free_port
from e2e.conftest import Network


@pytest.fixture
def node_metrics_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """Give the node processes a free metrics port (the env is inherited when ``network`` starts them)."""
    port = free_port()
    monkeypatch.setenv("DARKBLOOM_NODE_METRICS_PORT", str(port))
    return port


def json_records(text: str) -> list[dict]:  # type: ignore[type-arg]
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_request_id_is_in_both_logs_and_the_prompt_in_neither(node_metrics_port: int, network: Network) -> None:
    secret = f"violet-walrus-{uuid.uuid4().hex[:12]}"
    resp = httpx.post(
        f"{network.base_url}/v1/chat/completions",
        json={
            "model": network.model,
            "messages": [{"role": "user", "content": f"say {secret}"}],
            "max_tokens": 6,
            "temperature": 0,
        },
        headers={"Authorization": f"Bearer {network.key}"},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    rid = resp.headers["x-request-id"]
    assert rid == resp.json()["id"]

    coord, node = network.coordinator, network.nodes[0]
    def logged() -> bool:
        # Both processes write their line for this request after the response is on the wire.
        node_done = any(r.get("request_id") == rid for r in json_records(node.text()))
        coord_done = any(r.get("request_id") == rid and r["msg"] == "http request" for r in json_records(coord.text()))
        return node_done and coord_done

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not logged():
        time.sleep(0.1)
    coord_lines = [r for r in json_records(coord.text()) if r.get("request_id") == rid]
    node_lines = [r for r in json_records(node.text()) if r.get("request_id") == rid]
    assert any(r["msg"] == "http request" and r["status"] == 200 for r in coord_lines), coord.text()[-2000:]
    assert node_lines, node.text()[-2000:]
    for proc in (coord, node):
        assert secret not in proc.text()
        assert network.key not in proc.text()


def test_metrics_of_coordinator_and_node_move_with_traffic(node_metrics_port: int, network: Network) -> None:
    node_url = f"http://127.0.0.1:{node_metrics_port}/metrics"
    before = samples(httpx.get(node_url, timeout=10).text)
    assert before[("darkbloom_node_connected", ())] == 1
    assert before[("darkbloom_node_max_concurrency", (("model", network.model),))] >= 1
    with httpx.stream(
        "POST",
        f"{network.base_url}/v1/chat/completions",
        json={
            "model": network.model,
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 12,
            "stream": True,
        },
        headers={"Authorization": f"Bearer {network.key}"},
        timeout=60,
    ) as stream:
        assert stream.status_code == 200
        assert stream.read().endswith(b"data: [DONE]\n\n")
    coord = samples(httpx.get(f"{network.base_url}/metrics", timeout=10).text)
    model = (("model", network.model),)
    assert (
        coord[
            (
                "darkbloom_requests_total",
                (("model", network.model), ("route", "chat.completions"), ("status", "completed")),
            )
        ]
        == 1
    )
    assert coord[("darkbloom_ttft_seconds_count", model)] == 1
    assert coord[("darkbloom_tokens_total", (("kind", "completion"), *model))] >= 1
    assert coord[("darkbloom_nodes_connected", (("trust_level", "software"),))] == 1  # real nodes attest with their keys
    after = samples(httpx.get(node_url, timeout=10).text)
    assert after[("darkbloom_node_decode_tokens_per_second", model)] > 0
    assert after[("darkbloom_node_peak_rss_bytes", ())] > 0
    stats = httpx.get(f"{network.base_url}/v1/stats", timeout=10).json()
    assert stats["active_nodes"] == 1 and stats["models"] == [network.model]
