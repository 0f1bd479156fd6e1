"""The live generation stream of one operator: header (op, backend, attempt, tokens, rate) and
the text so far, validation errors and retries inline. Appends go to a `Log` (line-virtualised:
cost per batch, not per character already on screen); switching operator rewrites it once."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Log, Static

from fastkernels_tui.views import OpView


class StreamView(Vertical):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.op: str | None = None
        self.mask_times = False

    def compose(self) -> ComposeResult:
        yield Static("select an operator", id="stream-header")
        yield Log(id="stream-log", highlight=False, auto_scroll=True)

    @property
    def log_widget(self) -> Log:
        return self.query_one("#stream-log", Log)

    def show(self, view: OpView | None) -> None:
        log = self.log_widget
        log.clear()
        self.op = view.name if view else None
        if view is not None:
            log.write(view.stream_text())
        self.update_header(view)

    def append(self, text: str) -> None:
        self.log_widget.write(text)

    def update_header(self, view: OpView | None, now: float | None = None) -> None:
        header = self.query_one("#stream-header", Static)
        if view is None:
            header.update("select an operator")
            return
        t = Text()
        t.append(view.name, style="bold")
        t.append(f"  {view.status}")
        if view.attempt:
            t.append(f" · attempt {view.attempt}")
        if view.backend:
            t.append(f" · backend {view.backend}")
        t.append(f" · {view.tokens} tok")
        if self.mask_times:
            t.append(" · -- tok/s")
        else:
            rate = view.rate(now or time.monotonic())
            if rate is not None:
                t.append(f" · {rate:.0f} tok/s")
        if view.steering:
            t.append(f"\nsteering: {view.steering}", style="italic")
        header.update(t)
