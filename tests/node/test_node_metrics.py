"""The node's local /metrics: parses, follows the engines, and never stops a node from starting."""

from __future__ import annotations

import socket

import httpx
from prometheus_client.parser import text_string_to_metric_families

from darkbloom.node.metrics import NodeCollector, start_node_metrics
from darkbloom.protocol import SlotCapacity


class Slot:
    def __init__(self) -> None:
        self.running = 0

    def capacity(self) -> SlotCapacity:
        return SlotCapacity(
            model="m",
            num_running=self.running,
            max_concurrency=4,
            active_token_budget_used=120,
            active_token_budget_max=4096,
            kv_bytes_per_token=2048,
            observed_decode_tps=42.5,
        )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_exporter_serves_batch_tokens_kv_and_memory() -> None:
    slot = Slot()
    server = start_node_metrics(NodeCollector({"m": slot}, connected=lambda: True, active=lambda: slot.running), port=0)
    assert server is not None
    try:
        first = scrape(server.url)
        slot.running = 3
        second = scrape(server.url)
    finally:
        server.close()
    m = (("model", "m"),)
    assert first[("darkbloom_node_batch_size", m)] == 0 and second[("darkbloom_node_batch_size", m)] == 3
    assert second[("darkbloom_node_active_requests", ())] == 3
    assert second[("darkbloom_node_decode_tokens_per_second", m)] == 42.5
    assert (
        second[("darkbloom_node_kv_tokens_used", m)] == 120
        and second[("darkbloom_node_kv_bytes_used", m)] == 120 * 2048
    )
    assert second[("darkbloom_node_connected", ())] == 1 and second[("darkbloom_node_peak_rss_bytes", ())] > 0


def test_busy_port_or_off_means_no_exporter_but_no_crash(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert start_node_metrics(NodeCollector({}), port=busy.getsockname()[1]) is None
    monkeypatch.setenv("DARKBLOOM_NODE_METRICS_PORT", "off")
    assert start_node_metrics(NodeCollector({})) is None
    monkeypatch.setenv("DARKBLOOM_NODE_METRICS_PORT", "eighty")
    assert start_node_metrics(NodeCollector({})) is None
