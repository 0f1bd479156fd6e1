"""The help screen: what the cockpit shows, and every key binding (read from the live bindings,
so a user keymap shows up here too)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = """\
fastkernels cockpit

Left: the model's operators at this level, each with its status and best speedup.
Centre: the selected operator's generation stream, its diff (baseline or previous attempt vs
candidate), an editor (ctrl+s saves to disk and re-checks), its unit results and the end-to-end
report. Below: steer the next attempt of this operator (or all, with the switch).
Right: live GPU (NVML) and host metrics.
Review is on unless --auto-approve: only approved kernels enter the end-to-end benchmark.
ctrl+p opens the command palette. Theme files: themes/*.toml and <config dir>/themes/*.toml.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close", id="help_close")]

    def compose(self) -> ComposeResult:
        table = Table(title="keys", box=None, padding=(0, 2))
        table.add_column("key", style="bold")
        table.add_column("action")
        self.rows = sorted(self._app_bindings(), key=lambda row: row[1])
        for key, description in self.rows:
            table.add_row(key, description)
        with VerticalScroll(id="help-body"):
            yield Static(Text(INTRO))
            yield Static(table)
            yield Static(Text("escape closes", style="dim"))

    def _app_bindings(self) -> list[tuple[str, str]]:
        """(keys, description) of the app's bindings (footer-hidden ones too), the main screen's and
        the editor's, after any user keymap. An action bound to several keys lists them all, the
        footer's first: quit is `q` (the footer) and `^q` (which works in a text box too)."""
        from fastkernels_tui.screens.main import MainScreen
        from fastkernels_tui.widgets.editor import KernelEditor

        keys: dict[str, list[str]] = {}
        described: dict[str, str] = {}
        own = [(k, b) for k, b in self.app._bindings if not b.priority]
        shared = [(k, b) for k, b in self.app._bindings if b.priority]
        extra = [(b.key, b) for b in (*MainScreen.BINDINGS, *KernelEditor.BINDINGS)]
        for key, binding in (*own, *shared, *extra):
            if not binding.description:
                continue
            action = binding.action
            described.setdefault(action, binding.description)
            display = self.app.get_key_display(binding.with_key(key))
            if display not in keys.setdefault(action, []):
                keys[action].append(display)
        return [(", ".join(keys[action]), described[action]) for action in keys]

    async def action_dismiss(self, result=None) -> None:
        self.dismiss(None)
