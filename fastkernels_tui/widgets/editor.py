"""Edit the selected candidate in place. Ctrl+S posts `KernelEditor.SaveRequested`; the app
writes it through the engine (`Agent.submit_edit`: on disk at once, then re-validated and
re-benchmarked in a worker)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static, TextArea

from fastkernels_tui.views import OpView


class CodeArea(TextArea):
    """The code editor's text area. Escape is not taken here (a code editor's TextArea moves focus to
    the next widget, the steering box, where the cockpit's keys become text): it reaches the
    screen, which puts focus back on the operator tree."""

    async def _on_key(self, event) -> None:
        if event.key == "escape":
            event.prevent_default()  # TextArea's own handler (called after this one) stays out
        # Other keys: Textual calls TextArea's handler next, as for any subclass.


class KernelEditor(Vertical):
    BINDINGS = [Binding("ctrl+s", "save", "Save & re-check", id="save")]

    class SaveRequested(Message):
        def __init__(self, op: str, code: str) -> None:
            super().__init__()
            self.op = op
            self.code = code

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.op: str | None = None
        self._loaded = ""

    def compose(self) -> ComposeResult:
        yield Static("select an operator with a candidate", id="editor-header")
        yield CodeArea.code_editor("", language="python", id="editor-text", soft_wrap=False)

    @property
    def text_area(self) -> TextArea:
        return self.query_one("#editor-text", TextArea)

    @property
    def dirty(self) -> bool:
        return self.text_area.text != self._loaded

    def load(self, view: OpView | None, force: bool = False) -> None:
        """Show `view`'s candidate; keeps unsaved edits of the same op unless `force`."""
        if view is not None and view.name == self.op and self.dirty and not force:
            return
        self.op = view.name if view else None
        code = (view.code or "") if view else ""
        self._loaded = code
        self.text_area.load_text(code)
        where = f" · {view.path}" if view and view.path else ""
        self.query_one("#editor-header", Static).update(
            f"{view.name}{where} · ctrl+s saves and re-checks" if view else "select an operator with a candidate")

    def mark_saved(self) -> None:
        self._loaded = self.text_area.text

    def action_save(self) -> None:
        if self.op is None:
            self.notify("no operator selected", severity="warning")
            return
        self.post_message(self.SaveRequested(self.op, self.text_area.text))
