"""Node drill-down: one node's hardware, trust, slots and its recent requests."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from darkbloom.tui.dashboard.base import DashboardScreen, LiveTable
from darkbloom.tui.dashboard.data import FEED_COLUMNS, DashboardData, feed_row, fmt_age, fmt_num, trust_label

SLOT_COLUMNS = ("Model", "State", "Running", "Waiting", "Max", "decode tok/s", "prefill tok/s")


class NodeScreen(DashboardScreen):
    BINDINGS = [Binding("escape,backspace", "app.pop_screen", "Back")]

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def body(self) -> ComposeResult:
        yield Static("", id="node-summary", classes="title")
        yield Static("Slots", classes="section")
        slots = LiveTable(id="slots", cursor_type="row", zebra_stripes=True)
        slots.add_columns(*SLOT_COLUMNS)
        yield slots
        yield Static("Recent requests", classes="section")
        feed = LiveTable(id="node-feed", cursor_type="row", zebra_stripes=True)
        feed.add_columns(*(c for c in FEED_COLUMNS if c != "Node"))
        yield feed

    def render_data(self, data: DashboardData) -> None:
        summary = self.query_one("#node-summary", Static)
        slots = self.query_one("#slots", DataTable)
        feed = self.query_one("#node-feed", DataTable)
        node = data.nodes.get(self.node_id)
        slots.clear()
        if node is None:
            summary.update(f"Node {self.node_id} has left the fleet.")
        else:
            chip = node.get("chip") or "unknown chip"
            age = node.get("attestation_age_s")
            attested = "never" if age is None else f"{fmt_age(age)} ago"
            summary.update(
                f"Node {node['id']} · {chip}, {fmt_num(node.get('memory_gb'), 0)} GB · "
                f"version {node.get('version') or '—'}\n"
                f"trust {trust_label(node)} · attested {attested} · "
                f"connected {fmt_age(node.get('connected_s'))} · served {node.get('served', 0)} · "
                f"active {node.get('active', 0)}/{node.get('max', 0)} · "
                f"heartbeat {fmt_age(node.get('heartbeat_age_s'))} ago"
            )
            for s in node.get("slots", []):
                slots.add_row(
                    s["model"],
                    s["state"],
                    str(s["running"]),
                    str(s["waiting"]),
                    str(s["max"]),
                    fmt_num(s.get("decode_tps")),
                    fmt_num(s.get("prefill_tps")),
                )
        feed.clear()
        for rec in reversed(data.node_requests(self.node_id)[-50:]):
            row = feed_row(rec)
            feed.add_row(*(v for v, c in zip(row, FEED_COLUMNS, strict=True) if c != "Node"))
