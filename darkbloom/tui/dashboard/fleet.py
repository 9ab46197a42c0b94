"""The fleet screen: one row per node, sortable; Enter drills into a node.

With a consumer key (the public view) it lists models and their capacity
instead, since node detail needs the admin credential.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from darkbloom.tui.dashboard.base import DashboardScreen, LiveTable
from darkbloom.tui.dashboard.data import FLEET_COLUMNS, DashboardData, fleet_row, fmt_num, plural

PUBLIC_COLUMNS = ("Model", "Nodes", "Slots", "Free", "Queue", "Est. wait", "tok/s (5 min)")


def _lines(row: tuple[str, ...]) -> int:
    """How many lines a fleet row needs (one per slot)."""
    return max(cell.count("\n") for cell in row) + 1


class FleetScreen(DashboardScreen):
    BINDINGS = [
        Binding("s", "cycle_sort", "Sort"),
        Binding("o", "reverse_sort", "Order"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort_column = 0
        self.sort_reverse = False
        self._public: bool | None = None
        self._rows: dict[str, tuple[str, ...]] = {}  # what the table shows now, by node id

    def body(self) -> ComposeResult:
        yield Static("", id="fleet-title", classes="title")
        table = LiveTable(id="fleet", cursor_type="row", zebra_stripes=True)
        yield table

    def _setup(self, public: bool) -> DataTable[str]:
        table: DataTable[str] = self.query_one("#fleet", DataTable)
        if self._public is not public:
            table.clear(columns=True)
            self._rows = {}
            if public:
                table.add_columns(*PUBLIC_COLUMNS)
            else:
                for key, header, _ in FLEET_COLUMNS:
                    table.add_column(header, key=key)
            self._public = public
        return table

    def render_data(self, data: DashboardData) -> None:
        if data.snapshot is None:
            return
        title = self.query_one("#fleet-title", Static)
        if not data.admin:
            table = self._setup(public=True)
            table.clear()
            for m in data.models:
                table.add_row(
                    m["model"],
                    str(m["nodes"]),
                    str(m["slots"]),
                    str(m["free_slots"]),
                    str(m["queue_depth"]),
                    fmt_num(m.get("est_wait_s"), 1, " s"),
                    fmt_num(m.get("tokens_per_s")),
                    key=m["model"],
                )
            title.update(
                f"Public view: {plural(len(data.models), 'model')}. "
                "Node detail needs the admin credential (--admin-key)."
            )
            return
        table = self._setup(public=False)
        key, header, sort_key = FLEET_COLUMNS[self.sort_column]
        nodes = sorted(data.nodes.values(), key=sort_key, reverse=self.sort_reverse)
        rows = {n["id"]: fleet_row(n) for n in nodes}
        if list(rows) == list(self._rows) and all(_lines(rows[k]) == _lines(self._rows[k]) for k in rows):
            # Same nodes, order and row heights (the usual heartbeat): touch only the cells that changed.
            columns = [k for k, _, _ in FLEET_COLUMNS]
            for node_id, row in rows.items():
                for column, old, new in zip(columns, self._rows[node_id], row, strict=True):
                    if old != new:
                        table.update_cell(node_id, column, new, update_width=True)
        else:
            selected = self._selected(table)
            table.clear()
            for node in nodes:
                table.add_row(*rows[node["id"]], key=node["id"], height=max(1, len(node.get("slots", []))))
            if selected is not None and selected in rows:
                table.move_cursor(row=table.get_row_index(selected), animate=False)
        self._rows = rows
        arrow = "↓" if self.sort_reverse else "↑"
        title.update(f"{plural(len(nodes), 'node')} · sorted by {header} {arrow} · Enter: node detail")

    @staticmethod
    def _selected(table: DataTable[Any]) -> str | None:
        if table.row_count == 0:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:
            return None

    def action_cycle_sort(self) -> None:
        self.sort_column = (self.sort_column + 1) % len(FLEET_COLUMNS)
        self.render_data(self.dashboard.data)

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.render_data(self.dashboard.data)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if self._public:
            return
        keys = [k for k, _, _ in FLEET_COLUMNS]
        column = keys.index(str(event.column_key.value))
        self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column = column
        self.render_data(self.dashboard.data)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if self._public or event.row_key.value is None:
            return
        from darkbloom.tui.dashboard.node import NodeScreen

        self.app.push_screen(NodeScreen(str(event.row_key.value)))
