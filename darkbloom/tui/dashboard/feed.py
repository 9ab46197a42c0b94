"""The live request feed: one row per finished request, newest at the bottom, scrolling as they land."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from darkbloom.tui.dashboard.base import DashboardScreen, LiveTable
from darkbloom.tui.dashboard.data import FEED_COLUMNS, FEED_SIZE, DashboardData, feed_row


class FeedScreen(DashboardScreen):
    def __init__(self) -> None:
        super().__init__()
        self._shown = 0

    def body(self) -> ComposeResult:
        yield Static("", id="feed-title", classes="title")
        table = LiveTable(id="feed", cursor_type="row", zebra_stripes=True)
        table.add_columns(*FEED_COLUMNS)
        yield table

    def render_data(self, data: DashboardData) -> None:
        table = self.query_one("#feed", DataTable)
        new = data.added - self._shown
        if new <= 0:
            return
        following = table.row_count == 0 or table.cursor_row >= table.row_count - 1
        if new > len(data.feed):
            table.clear()
            new = len(data.feed)
        for rec in list(data.feed)[len(data.feed) - new :]:
            table.add_row(*feed_row(rec))
        while table.row_count > FEED_SIZE:
            table.remove_row(next(iter(table.rows)))
        self._shown = data.added
        self.query_one("#feed-title", Static).update(f"{table.row_count} recent requests · newest last")
        if following:
            table.move_cursor(row=table.row_count - 1, animate=False)
