"""The steering input: an instruction for the next attempt of the selected operator, or of all
operators when the switch is on. Posts `SteeringBar.Steer`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Label, Switch


class SteeringBar(Horizontal):
    class Steer(Message):
        def __init__(self, note: str, all_ops: bool) -> None:
            super().__init__()
            self.note = note
            self.all_ops = all_ops

    def compose(self) -> ComposeResult:
        yield Input(placeholder="steer the next attempt (enter sends · esc: back to the tree)…", id="steer-input")
        yield Label("all ops", id="steer-all-label")
        yield Switch(value=False, id="steer-all")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        note = event.value.strip()
        if note:
            self.post_message(self.Steer(note, self.query_one(Switch).value))
            event.input.value = ""
