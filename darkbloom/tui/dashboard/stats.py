"""Network stats: tokens served, requests, active nodes, earnings paid."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid
from textual.widgets import Static

from darkbloom.tui.dashboard.base import DashboardScreen
from darkbloom.tui.dashboard.data import DashboardData, fmt_cost, fmt_int, fmt_num

CARDS = (
    ("tokens", "Tokens served"),
    ("requests", "Requests"),
    ("nodes", "Active nodes"),
    ("models", "Models served"),
    ("throughput", "Throughput (5 min)"),
    ("earnings", "Earnings paid"),
)


class StatsScreen(DashboardScreen):
    def body(self) -> ComposeResult:
        yield Static("Since the coordinator started", id="stats-title", classes="title")
        with Grid(id="cards"):
            for key, title in CARDS:
                card = Static("", id=f"card-{key}", classes="card", markup=False)
                card.border_title = title
                yield card

    def render_data(self, data: DashboardData) -> None:
        if data.snapshot is None:
            return
        s = data.stats
        tps = sum(m.get("tokens_per_s") or 0.0 for m in data.models)
        earnings = s.get("earnings_paid_micro_usd")
        values = {
            "tokens": (fmt_int(s.get("tokens_served")), f"{fmt_int(s.get('completion_tokens'))} generated"),
            "requests": (
                fmt_int(s.get("requests")),
                f"{fmt_int(s.get('completed'))} completed · {fmt_int(s.get('failed'))} failed",
            ),
            "nodes": (fmt_int(s.get("active_nodes")), f"{fmt_int(s.get('in_flight'))} requests in flight"),
            "models": (fmt_int(s.get("models")), ""),
            "throughput": (fmt_num(tps, 1, " tok/s"), "completion tokens"),
            "earnings": (fmt_cost(earnings), "to providers" if earnings is not None else "billing not enabled"),
        }
        for key, (big, small) in values.items():
            self.query_one(f"#card-{key}", Static).update(f"{big}\n{small}")
