"""Edit the system prompt that starts every request of this conversation."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, TextArea


class SystemPromptScreen(ModalScreen[str | None]):
    """A text area; Ctrl+S saves, Escape cancels."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "dismiss(None)", "Cancel"),
    ]

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical(id="system", classes="dialog"):
            yield Label("System prompt (Ctrl+S to save, Esc to cancel)")
            yield TextArea(self.prompt, id="system-text")

    def on_mount(self) -> None:
        self.query_one("#system-text", TextArea).focus()

    def action_save(self) -> None:
        self.dismiss(self.query_one("#system-text", TextArea).text.strip())
