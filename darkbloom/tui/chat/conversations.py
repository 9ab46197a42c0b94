"""The saved conversations, newest first; Enter reopens one."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from darkbloom.client.history import ConversationSummary


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class ConversationsScreen(ModalScreen[int | None]):
    """A table of saved conversations; dismisses with the chosen id."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Back")]

    def __init__(self, conversations: list[ConversationSummary]) -> None:
        super().__init__()
        self.conversations = conversations

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations", classes="dialog"):
            yield Label(f"{len(self.conversations)} saved conversations (Enter to open, Esc to go back)")
            table: DataTable[str] = DataTable(id="conversation-table", cursor_type="row")
            table.add_columns("#", "Updated", "Model", "Turns", "Title")
            for c in self.conversations:
                table.add_row(str(c.id), when(c.updated), c.model, str(c.messages), c.title, key=str(c.id))
            yield table

    def on_mount(self) -> None:
        self.query_one("#conversation-table", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(int(str(event.row_key.value)))
