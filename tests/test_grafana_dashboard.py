"""The Grafana dashboard only queries metrics darkbloom actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from darkbloom.node.metrics import NodeCollector
from darkbloom.protocol import SlotCapacity
from darkbloom.server.metrics import CoordinatorMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


class Slot:
    def capacity(self) -> SlotCapacity:
        return SlotCapacity(model="m", num_running=1, max_concurrency=4)


def exported_names() -> set[str]:
    import mlx.core  # noqa: F401  (the node's MLX memory gauges appear once MLX is loaded, as in a serving node)

    families = list(CoordinatorMetrics().registry.collect()) + list(NodeCollector({"m": Slot()}).collect())
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def test_every_panel_queries_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    used = {name for e in exprs for name in re.findall(r"\bdarkbloom_[a-z0-9_]+", e)}
    missing = used - exported_names()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    for wanted in (
        "darkbloom_ttft_seconds_bucket",
        "darkbloom_inter_token_seconds_bucket",
        "darkbloom_queue_depth",
        "darkbloom_rate_limited_total",
        "darkbloom_nodes_connected",
        "darkbloom_writer_lane_depth",
        "darkbloom_node_batch_size",
        "darkbloom_node_kv_tokens_used",
    ):
        assert wanted in used, f"the dashboard should chart {wanted}"


def test_panels_have_unique_ids_and_positions() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all({"x", "y", "w", "h"} <= set(p["gridPos"]) for p in panels)
