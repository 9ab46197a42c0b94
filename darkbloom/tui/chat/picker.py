"""Pick a model from the ones the coordinator serves now (``/v1/models``)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class ModelPicker(ModalScreen[str | None]):
    """A list of model ids; Enter picks one, Escape keeps the current model."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, models: list[str], current: str | None) -> None:
        super().__init__()
        self.models = models
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker", classes="dialog"):
            yield Label("Choose a model (Enter to pick, Esc to cancel)")
            yield OptionList(*(Option(m, id=m) for m in self.models), id="models")

    def on_mount(self) -> None:
        options = self.query_one("#models", OptionList)
        if self.current in self.models:
            options.highlighted = self.models.index(self.current)
        elif self.models:
            options.highlighted = 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
