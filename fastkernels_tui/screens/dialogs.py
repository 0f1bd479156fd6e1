"""Small modal dialogs: a yes/no question and a choice between a few named answers."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceScreen(ModalScreen[str]):
    """Dismisses with the id of the chosen button; escape dismisses with `cancel_id`."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog_cancel")]

    def __init__(self, message: str, choices: list[tuple[str, str]], cancel_id: str, **kw) -> None:
        super().__init__(**kw)
        self.message = message
        self.choices = choices
        self.cancel_id = cancel_id

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.message, id="dialog-message")
            with Horizontal(id="dialog-buttons"):
                for i, (cid, label) in enumerate(self.choices):
                    yield Button(label, id=cid, variant="primary" if i == 0 else "default")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id)

    def action_cancel(self) -> None:
        self.dismiss(self.cancel_id)


class ConfirmQuit(ChoiceScreen):
    BINDINGS = [Binding("q", "quit_now", "Quit", id="dialog_quit")]  # q q quits a running cockpit

    def __init__(self, running: list[str]) -> None:
        what = ", ".join(running)
        super().__init__(
            f"Work is running ({what}).\nQuit anyway? The run is cancelled and its jobs are killed; "
            "kernels already saved stay on disk.\nq or enter quits, escape keeps working.",
            [("quit", "Quit"), ("stay", "Keep working")], cancel_id="stay")

    def action_quit_now(self) -> None:
        self.dismiss("quit")
