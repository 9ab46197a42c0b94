"""The frame every dashboard screen shares: header, connection banner, body, footer of bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from darkbloom.tui.dashboard.data import DashboardData

if TYPE_CHECKING:
    from darkbloom.tui.dashboard.app import DashboardApp


class LiveTable(DataTable[Any]):
    """A ``DataTable`` for rows that keep arriving.

    Textual 8 caches each rendered row under a key that does not include the
    column widths, and widens columns for new content later, when idle: a row
    drawn in between stays drawn at the old widths (cut off) until something
    else changes. Re-render the rows whenever the widths moved.
    """

    async def _on_idle(self, event: events.Idle) -> None:
        before = [c.get_render_width(self) for c in self.columns.values()]
        await super()._on_idle(event)
        if before != [c.get_render_width(self) for c in self.columns.values()]:
            self._update_count += 1  # part of the row cache key
            self.refresh()


class DashboardScreen(Screen[None]):
    """A screen that redraws itself from ``DashboardData`` whenever the app has news."""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Static("", id="banner", markup=False)
        yield from self.body()
        yield Footer()

    def body(self) -> ComposeResult:
        """The screen's own widgets, between the banner and the footer (every screen defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define body()")

    @property
    def dashboard(self) -> DashboardApp:
        return self.app  # type: ignore[return-value]

    def on_screen_resume(self) -> None:
        self.show(self.dashboard.data)

    def show(self, data: DashboardData) -> bool:
        """Redraw the banner and the body; called on resume and when new data arrives.

        Returns ``False``, drawing nothing, while the screen's widgets are still
        being mounted (a fast coordinator's first snapshot can come first).
        """
        found = self.query("#banner")
        if not found:
            return False
        banner = found.first(Static)
        problem = self.dashboard.problem
        banner.update(problem or "")
        banner.display = bool(problem)
        if data.snapshot is None and not problem:
            banner.update(f"connecting to {self.dashboard.source.url} …")
            banner.display = True
        self.render_data(data)
        return True

    def render_data(self, data: DashboardData) -> None:
        """Fill the screen's widgets from new data (every screen defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define render_data()")
