"""Baseline vs candidate (or candidate vs its previous attempt), side by side or unified,
highlighted with pygments through Rich's Syntax."""

from __future__ import annotations

import difflib

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from fastkernels_tui.views import OpView


def _highlight_lines(code: str, theme: str) -> list[Text]:
    if not code:
        return []
    text = Syntax(code, "python", theme=theme).highlight(code)
    lines = text.split("\n", allow_blank=True)
    if lines and code.endswith("\n") and not lines[-1].plain:
        lines = lines[:-1]
    return lines


def side_by_side(old: str, new: str, theme: str, dark: bool, old_title: str, new_title: str) -> Table:
    """A two-column table of aligned lines; removed lines tinted red, added green."""
    removed, added = ("on #3b1a1a", "on #173b1a") if dark else ("on #fbe0e0", "on #dff5e0")
    a, b = old.splitlines(), new.splitlines()
    ha, hb = _highlight_lines(old, theme), _highlight_lines(new, theme)
    table = Table(expand=True, show_edge=False, box=None, padding=(0, 1), pad_edge=False)
    table.add_column("", justify="right", style="dim", no_wrap=True, width=4)
    table.add_column(old_title, ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("", justify="right", style="dim", no_wrap=True, width=4)
    table.add_column(new_title, ratio=1, no_wrap=True, overflow="ellipsis")
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        n = max(i2 - i1, j2 - j1)
        for k in range(n):
            i, j = i1 + k, j1 + k
            left = ha[i].copy() if i < i2 and i < len(ha) else Text("")
            right = hb[j].copy() if j < j2 and j < len(hb) else Text("")
            if tag != "equal":
                if i < i2:
                    left.stylize(removed)
                if j < j2:
                    right.stylize(added)
            table.add_row(str(i + 1) if i < i2 else "", left, str(j + 1) if j < j2 else "", right)
    return table


def unified(old: str, new: str, theme: str, old_title: str, new_title: str) -> Syntax | Text:
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), old_title, new_title, n=3))
    if not diff:
        return Text("no differences", style="dim")
    return Syntax(diff, "diff", theme=theme, word_wrap=False)


class DiffView(Vertical):
    """State: `split` (side by side) or unified; `against` "baseline" or "previous"."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.split = True
        self.against = "baseline"
        self._view: OpView | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="diff-header")
        with VerticalScroll(id="diff-scroll"):
            yield Static("", id="diff-body")

    def show(self, view: OpView | None) -> None:
        self._view = view
        header = self.query_one("#diff-header", Static)
        body = self.query_one("#diff-body", Static)
        mode = "side by side" if self.split else "unified"
        if view is None:
            header.update("no operator selected")
            body.update("")
            return
        if self.against == "previous":
            old, old_title = view.previous_code or "", f"{view.name} previous attempt"
        else:
            old, old_title = view.baseline_code or "", f"baseline {view.name}"
        new, new_title = view.code or "", f"candidate {view.name}" + (f" (attempt {view.attempt})" if view.attempt else "")
        header.update(Text.assemble((f"{old_title}  →  {new_title}", "bold"), f"   [{mode}]  u: toggle view · p: vs previous/baseline"))
        if not new:
            body.update(Text("no candidate yet: generate one (g / r)", style="dim"))
            return
        if not old:
            body.update(Text(f"no {self.against} code to compare with", style="dim"))
            return
        dark = self.app.current_theme.dark
        theme = "monokai" if dark else "friendly"
        if self.split:
            body.update(side_by_side(old, new, theme, dark, old_title, new_title))
        else:
            body.update(unified(old, new, theme, old_title, new_title))

    def toggle_split(self) -> None:
        self.split = not self.split
        self.show(self._view)

    def toggle_against(self) -> None:
        self.against = "previous" if self.against == "baseline" else "baseline"
        self.show(self._view)
