"""The routing screen: per model, who serves it, free slots, queue, wait and rejections, with sparklines."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Sparkline, Static

from darkbloom.tui.dashboard.base import DashboardScreen
from darkbloom.tui.dashboard.data import DashboardData, fmt_num, fmt_pct, plural


def _safe_id(model: str) -> str:
    return "model-" + "".join(ch if ch.isalnum() else "-" for ch in model)


class ModelPanel(Vertical):
    """One model: a stats line and two sparklines (requests, and 429s plus timeouts, per 10 s)."""

    def __init__(self, view: dict[str, Any]) -> None:
        super().__init__(id=_safe_id(view["model"]), classes="model-panel")
        self.model = view["model"]
        self.view = view
        self._ready = False

    def compose(self) -> ComposeResult:
        yield Static("", classes="model-stats", markup=False)
        with Horizontal(classes="spark-row"):
            yield Label("requests / 10 s ", classes="spark-label")
            yield Sparkline([], classes="requests")
        with Horizontal(classes="spark-row"):
            yield Label("429 + timeouts  ", classes="spark-label")
            yield Sparkline([], classes="rejects")

    def on_mount(self) -> None:
        self._ready = True
        self.update_view(self.view)

    def update_view(self, m: dict[str, Any]) -> None:
        self.view = m
        if not self._ready:  # mounted but not yet composed: on_mount draws it
            return
        self.border_title = m["model"]
        nodes = m.get("node_ids")
        serving = plural(m["nodes"], "node") + (f" ({', '.join(nodes)})" if nodes else "")
        self.query_one(".model-stats", Static).update(
            f"{serving} · free slots {m['free_slots']}/{m['slots']} · queue {m['queue_depth']} · "
            f"est. wait {fmt_num(m.get('est_wait_s'), 1, ' s')}\n"
            f"last 5 min: {m['requests']} requests · 429 rate {fmt_pct(m.get('rate_429'))} · "
            f"timeouts {m['timeouts']} · failed {m['failed']} · {fmt_num(m.get('tokens_per_s'))} tok/s"
        )
        series = m.get("series", {})
        self.query_one(".requests", Sparkline).data = series.get("requests") or []
        self.query_one(".rejects", Sparkline).data = [
            a + b for a, b in zip(series.get("rejected", []), series.get("timeouts", []), strict=False)
        ]


class RoutingScreen(DashboardScreen):
    def body(self) -> ComposeResult:
        yield Static("", id="routing-title", classes="title")
        yield VerticalScroll(id="routing")

    def render_data(self, data: DashboardData) -> None:
        if data.snapshot is None:
            return
        models = data.models
        self.query_one("#routing-title", Static).update(
            f"{plural(len(models), 'model')} · sparklines: last 5 minutes, one bar per 10 s"
            if models
            else "No model is served or has been requested yet."
        )
        box = self.query_one("#routing", VerticalScroll)
        panels = {p.model: p for p in box.query(ModelPanel)}
        if list(panels) != [m["model"] for m in models]:
            box.remove_children()
            box.mount_all(ModelPanel(m) for m in models)
            return
        for m in models:
            panels[m["model"]].update_view(m)
