"""The frame every dashboard screen shares: header, connection banner, body, footer of bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from darkbloom.tui.dashboard.data import DashboardData

if TYPE_CHECKING:
    from darkbloom.tui.dashboard.app import DashboardApp


class DashboardScreen(Screen[None]):
    """A screen that redraws itself from ``DashboardData`` whenever the app has news."""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Static("", id="banner", markup=False)
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        raise NotImplementedError

    @property
    def dashboard(self) -> DashboardApp:
        return self.app  # type: ignore[return-value]

    def on_screen_resume(self) -> None:
        self.show(self.dashboard.data)

    def show(self, data: DashboardData) -> None:
        """Redraw the banner and the body; called on resume and when new data arrives."""
        banner = self.query_one("#banner", Static)
        problem = self.dashboard.problem
        banner.update(problem or "")
        banner.display = bool(problem)
        if data.snapshot is None and not problem:
            banner.update(f"connecting to {self.dashboard.source.url} …")
            banner.display = True
        self.render_data(data)

    def render_data(self, data: DashboardData) -> None:
        raise NotImplementedError
