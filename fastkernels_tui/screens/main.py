"""The main screen: operator tree | stream, diff, editor, unit and e2e tabs + steering | metrics.

It owns the per-operator views (`OpView`) and turns engine events and stream batches into
widget updates. It never calls the engine: actions go through the app, which runs them in
workers."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from fastkernels import events as ev
from fastkernels_tui.views import OpView, apply_event
from fastkernels_tui.widgets.bench import E2EPanel, UnitPanel
from fastkernels_tui.widgets.diff import DiffView
from fastkernels_tui.widgets.editor import KernelEditor
from fastkernels_tui.widgets.gpu import GpuPanel
from fastkernels_tui.widgets.op_tree import OpTree
from fastkernels_tui.widgets.steering import SteeringBar
from fastkernels_tui.widgets.stream import StreamView

TABS = ("stream", "diff", "editor", "unit", "e2e")
BUSY = ("generating", "validating", "valid")  # an attempt in flight
PASSING = ("correct", "pending review", "approved")


def next_step(views: list[OpView], auto_approve: bool, e2e: str | None) -> str:
    """The one line that tells a newcomer what to do now, from what the operators' statuses and the
    end-to-end benchmark (`e2e`: None, "running" or its verdict line) say."""
    if not views:
        return "finding the model's operators…"
    count = {s: sum(v.status == s for v in views) for s in {v.status for v in views}}
    if any(count.get(s) for s in BUSY):
        return "generating: ↑↓ picks the operator whose stream you watch · q cancels and quits"
    if e2e == "running":
        return "benchmarking end to end (E2E tab) · the GPU panel shows the load"
    review = count.get("pending review", 0)
    if review:
        return (f"{review} kernel(s) wait for your review: a approves, x rejects the selected one, "
                "A approves every passing one; then b benchmarks the approved ones end to end")
    if e2e:
        return f"{e2e} · r regenerates an operator (s steers it first), b benchmarks again"
    accepted = count.get("approved", 0) + (count.get("correct", 0) if auto_approve else 0)
    if accepted:
        return f"press b to benchmark the {accepted} approved kernel(s) end to end"
    if count.get("pending", 0) == len(views):
        return "press g to generate every operator's kernel (r: only the selected one) · ? help"
    return "no kernel passed yet: r regenerates the operator under the cursor (s steers it first) · g all"


class MainScreen(Screen):
    # Escape from anywhere on this screen (editor, steering box, tabs) returns to the operator tree,
    # where every cockpit key works; widgets that use escape themselves (dialogs) keep it.
    BINDINGS = [Binding("escape", "focus_tree", "Back to the operator tree", show=False, id="focus_tree")]

    def __init__(self, mask_times: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.views: dict[str, OpView] = {}
        self.selected: str | None = None
        self.mask_times = mask_times
        self._dirty: set[str] = set()  # ops whose header/tree label wait for the next tick
        self.log_lines: list[str] = []  # run-level messages, newest last
        self.auto_approve = False  # set by the app: with review on only approved kernels go end to end
        self.e2e: str | None = None  # None, "running" or the last end-to-end verdict, for `next_step`

    def compose(self) -> ComposeResult:
        yield Header(show_clock=not self.mask_times)
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield OpTree(id="op-tree")
                yield Static("starting…", id="run-status")
            with Vertical(id="center"):
                yield Static("", id="next-step")
                with TabbedContent(id="tabs", initial="stream"):
                    with TabPane("Stream", id="stream"):
                        yield StreamView(id="stream-view")
                    with TabPane("Diff", id="diff"):
                        yield DiffView(id="diff-view")
                    with TabPane("Editor", id="editor"):
                        yield KernelEditor(id="kernel-editor")
                    with TabPane("Unit", id="unit"):
                        yield UnitPanel(id="unit-panel")
                    with TabPane("E2E", id="e2e"):
                        yield E2EPanel(id="e2e-panel")
                yield SteeringBar(id="steering")
            yield GpuPanel(id="gpu-panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(StreamView).mask_times = self.mask_times
        self.set_interval(0.25, self._tick)
        self._show_next_step()

    def _show_next_step(self) -> None:
        self.query_one("#next-step", Static).update(
            "→ " + next_step(list(self.views.values()), self.auto_approve, self.e2e))

    # ---- accessors ------------------------------------------------------------------------
    @property
    def tree(self) -> OpTree:
        return self.query_one(OpTree)

    @property
    def stream(self) -> StreamView:
        return self.query_one(StreamView)

    @property
    def editor(self) -> KernelEditor:
        return self.query_one(KernelEditor)

    @property
    def diff(self) -> DiffView:
        return self.query_one(DiffView)

    @property
    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active

    def action_focus_tree(self) -> None:
        self.tree.focus()

    def view(self) -> OpView | None:
        return self.views.get(self.selected) if self.selected else None

    def show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def set_status(self, text: str) -> None:
        self.query_one("#run-status", Static).update(text)

    def add_log(self, line: str) -> None:
        self.log_lines.append(line)
        self.set_status("\n".join(self.log_lines[-4:]))

    # ---- operators ------------------------------------------------------------------------
    def set_ops(self, title: str, level: int, views: list[OpView]) -> None:
        self.views = {v.name: v for v in views}
        self.tree.set_model(title.split("/")[-1].replace(f" · L{level}", ""), level, views)
        if views:
            self.select(views[0].name)
            self.tree.select_op(views[0].name)

    def select(self, op: str) -> None:
        if op not in self.views:
            return
        self.selected = op
        self.stream.show(self.views[op])
        self._render_active(full=True)

    def current(self) -> str | None:
        """The operator the screen shows as the key being handled sees it: the tree's cursor, which
        a typed-ahead `down` has already moved while its highlight message is still queued."""
        op = self.tree.cursor_op
        if op is not None and op != self.selected:
            self.select(op)
        return self.selected

    def on_op_tree_op_chosen(self, event: OpTree.OpChosen) -> None:
        if event.op != self.selected:
            self.select(event.op)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._render_active(full=True)

    def _render_active(self, full: bool = False) -> None:
        view, tab = self.view(), self.active_tab
        if tab == "diff":
            self.diff.show(view)
        elif tab == "editor":
            self.editor.load(view)
        elif tab == "unit":
            self.query_one(UnitPanel).show(view)
        elif tab == "stream" and full:
            self.stream.update_header(view)

    # ---- engine input ---------------------------------------------------------------------
    def apply_stream(self, batch: dict[str, str]) -> None:
        """One batch of streamed text, every operator at once."""
        for op, text in batch.items():
            view = self.views.get(op)
            if view is None:
                continue
            view.add(text)
            view.chars += len(text)
            view.tokens = (view.chars + 3) // 4  # ~4 characters a token (code and English)
            if op == self.selected:
                self.stream.append(text)
            self._dirty.add(op)

    def apply_event(self, event: ev.Event) -> None:
        op = getattr(event, "op", None)
        if op is not None and op in self.views:
            view = self.views[op]
            if isinstance(event, ev.GenerationStarted) and self.e2e != "running":
                self.e2e = None  # a new kernel: the last end-to-end verdict no longer holds
            line = apply_event(view, event, time.monotonic())
            if line:
                view.add(line)
                if op == self.selected and isinstance(event, ev.StreamReset):
                    self.stream.show(view)  # the discarded text must leave the screen too
                elif op == self.selected:
                    self.stream.append(line)
            self.tree.update_op(view)
            if op == self.selected:
                self.stream.update_header(view)
                self._render_active()
            return
        if isinstance(event, ev.E2EProgress):
            self.e2e = "running"
            self.query_one(E2EPanel).progress(event.stage, event.done, event.total, event.detail)
        elif isinstance(event, ev.E2EResult):
            speed = getattr(event.report, "speedup_decode", None)
            if getattr(event.report, "device", "") == "cpu":
                timing = " · on a CPU timings mean nothing"
            else:
                timing = f" · decode {speed:.2f}× the eager baseline" if speed else ""
            self.e2e = ("end to end: PASS" if event.passed else "end to end: FAIL (see the E2E tab)") + timing
            self.query_one(E2EPanel).show_report(event.passed, event.report)
            self.add_log("e2e " + ("passed" if event.passed else "FAILED"))
        elif isinstance(event, ev.Message):
            self.add_log(event.text)
            if event.level in ("warning", "error"):
                self.notify(event.text, severity=event.level)
        elif isinstance(event, ev.RunFinished):
            self.add_log("run interrupted" if event.interrupted else "run finished")
        elif isinstance(event, ev.RunStarted):
            self.add_log(f"run started · {event.backend}" + (f" · {event.device}" if event.device else ""))

    def _tick(self) -> None:
        self._show_next_step()
        now = time.monotonic()
        if self.selected in self._dirty or (self.view() and self.view().status == "generating"):
            self.stream.update_header(self.view(), now)
        self._dirty.clear()
