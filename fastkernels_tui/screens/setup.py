"""Pick model, level, backend and review mode inside the app. Dismisses with new
`SessionOptions` (or None when cancelled)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Switch

from fastkernels.models.catalog import known_models
from fastkernels.registry.tasks import LEVEL_NAMES
from fastkernels_tui.options import SessionOptions


class SetupScreen(ModalScreen[SessionOptions | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="setup_cancel")]

    def __init__(self, options: SessionOptions) -> None:
        super().__init__()
        self.options = options

    def compose(self) -> ComposeResult:
        o = self.options
        models = known_models()
        if o.model not in models:
            models = [o.model, *models]
        with Vertical(id="setup"):
            yield Label("model")
            yield Select([(m, m) for m in models], value=o.model, allow_blank=False, id="setup-model")
            yield Label("level")
            yield Select([(f"{k} · {v}", k) for k, v in LEVEL_NAMES.items()], value=o.level, allow_blank=False,
                         id="setup-level")
            with Horizontal(classes="setup-row"):
                yield Label("tiny (CPU-sized)")
                yield Switch(value=o.tiny, id="setup-tiny")
                yield Label("auto-approve")
                yield Switch(value=o.auto_approve, id="setup-auto")
            yield Label("LLM backend: claude-<model>, openai:<model>, replay:<dir>, library")
            yield Input(value=o.llm_model, id="setup-llm")
            yield Label("base URL (openai: servers)")
            yield Input(value=o.llm_base_url or "", id="setup-url")
            with Horizontal(id="setup-buttons"):
                yield Button("Apply", variant="primary", id="setup-apply")
                yield Button("Cancel", id="setup-cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "setup-cancel":
            self.dismiss(None)
            return
        self.dismiss(self.options.with_(
            model=self.query_one("#setup-model", Select).value,
            level=int(self.query_one("#setup-level", Select).value),
            tiny=self.query_one("#setup-tiny", Switch).value,
            auto_approve=self.query_one("#setup-auto", Switch).value,
            llm_model=self.query_one("#setup-llm", Input).value.strip() or self.options.llm_model,
            llm_base_url=self.query_one("#setup-url", Input).value.strip() or None,
            notes=[],
        ))

    def action_cancel(self) -> None:
        self.dismiss(None)
