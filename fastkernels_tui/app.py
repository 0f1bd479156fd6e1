"""The cockpit application: key bindings, the engine's workers, and the routing of engine events
to the main screen. Layout and rendering live in screens/ and widgets/.

Threads: every engine call (discover, the whole run, one operator, an edit, approve/reject, the
end-to-end benchmark) runs in a Textual thread worker; metrics are sampled in another. Engine
events reach the UI thread as messages through `EventBridge` (text deltas coalesced). The UI
thread only renders and reacts."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.worker import Worker, WorkerState, get_current_worker

from fastkernels.errors import FastKernelsError
from fastkernels.gpu.metrics import MetricsSampler, MetricsSnapshot
from fastkernels_tui.bridge import EngineFlush, EventBridge
from fastkernels_tui.commands import CockpitCommands
from fastkernels_tui.views import OpView
from fastkernels_tui.options import (
    OFFLINE_LLM,
    AgentFactory,
    SessionOptions,
    missing_key,
    real_agent_factory,
)
from fastkernels_tui.screens.dialogs import ChoiceScreen, ConfirmQuit
from fastkernels_tui.screens.help import HelpScreen
from fastkernels_tui.screens.history import HistoryScreen
from fastkernels_tui.screens.main import MainScreen
from fastkernels_tui.screens.setup import SetupScreen
from fastkernels_tui.settings import load_settings, save_settings
from fastkernels_tui.themes import DEFAULT_THEME, load_themes
from fastkernels_tui.widgets.editor import KernelEditor
from fastkernels_tui.widgets.gpu import GpuPanel
from fastkernels_tui.widgets.steering import SteeringBar

HERE = Path(__file__).parent
ENGINE_GROUPS = ("engine", "pipeline", "op", "edit", "review", "steer", "e2e")
# How long a quit during a run waits for the engine to record the run as cancelled (its jobs are
# already killed; a library-backed run takes well under a second to wind down).
QUIT_GRACE_S = 1.5


class _UiExecutor(ThreadPoolExecutor):
    """The loop's default executor (where thread workers run). When the loop closes, asyncio joins
    its threads; after a quit that cancelled a run (`wait_at_close = False`), a thread still winding
    down (a network read, say) must not hold the terminal: `cli.run` ends the process without it."""

    wait_at_close = True

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=wait and self.wait_at_close, cancel_futures=cancel_futures or not self.wait_at_close)


class MetricsSampled(Message):
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:  # only the newest sample matters
        return isinstance(message, MetricsSampled)


class FastKernelsApp(App):
    TITLE = "fastkernels"
    CSS_PATH = [
        HERE / "screens" / "main.tcss", HERE / "screens" / "dialogs.tcss", HERE / "screens" / "help.tcss",
        HERE / "screens" / "history.tcss", HERE / "screens" / "setup.tcss",
        HERE / "widgets" / "op_tree.tcss", HERE / "widgets" / "stream.tcss", HERE / "widgets" / "diff.tcss",
        HERE / "widgets" / "editor.tcss", HERE / "widgets" / "bench.tcss", HERE / "widgets" / "gpu.tcss",
        HERE / "widgets" / "steering.tcss",
    ]
    COMMANDS = App.COMMANDS | {CockpitCommands}
    BINDINGS = [
        Binding("g", "run_all", "Generate all", id="run_all"),
        Binding("r", "regenerate", "Regenerate", id="regenerate"),
        Binding("a", "approve", "Approve", id="approve"),
        Binding("A", "approve_all", "Approve all", id="approve_all"),
        Binding("x", "reject", "Reject", id="reject"),
        Binding("s", "steer", "Steer", id="steer"),
        Binding("l", "show_tab('stream')", "Stream", show=False, id="tab_stream"),
        Binding("d", "show_tab('diff')", "Diff", id="tab_diff"),
        Binding("e", "show_tab('editor')", "Edit", id="tab_editor"),
        Binding("n", "show_tab('unit')", "Unit", id="tab_unit"),
        Binding("u", "diff_split", "Split/unified diff", show=False, id="diff_split"),
        Binding("p", "diff_against", "Diff vs previous/baseline", show=False, id="diff_against"),
        Binding("b", "bench", "E2E bench", id="bench"),
        Binding("E", "export", "Export approved (HF kernels layout)", show=False, id="export"),
        Binding("t", "next_theme", "Theme", show=False, id="next_theme"),
        Binding("o", "setup", "Setup", show=False, id="setup"),
        Binding("h", "history", "History", show=False, id="history"),
        Binding("question_mark,f1", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, options: SessionOptions, agent_factory: AgentFactory | None = None,
                 sampler: Any = None, sample_interval: float = 0.5, mask_times: bool = False,
                 remember: bool = True) -> None:
        super().__init__()
        self.options = options
        self.agent_factory = agent_factory or real_agent_factory
        self.sampler = sampler if sampler is not None else MetricsSampler()
        self.sample_interval = sample_interval
        self.mask_times = mask_times
        self.remember = remember  # write the theme to the settings file when it changes
        self.agent: Any = None
        self.bridge = EventBridge(self)
        self.our_themes: list[str] = []
        self.last_metrics: MetricsSnapshot | None = None
        self._reviews: list[threading.Event] = []  # one per approve/reject job, set when it is done
        self._executor: _UiExecutor | None = None

    # ---- start ----------------------------------------------------------------------------
    @property
    def main(self) -> MainScreen:
        return self.get_screen("main")  # type: ignore[return-value]

    async def on_mount(self) -> None:
        # Long-lived workers (metrics, the run, per-op jobs, e2e) each hold a thread; asyncio's
        # default pool is min(32, cores + 4) = 6 threads on a 2-core machine, too few.
        self._executor = _UiExecutor(32, thread_name_prefix="fk-ui-worker")
        asyncio.get_running_loop().set_default_executor(self._executor)
        themes, warnings = load_themes()
        for theme in themes:
            self.register_theme(theme)
        self.our_themes = [t.name for t in themes]
        settings = load_settings()
        wanted = self.options.theme or settings.get("theme") or DEFAULT_THEME
        if wanted not in self.available_themes:
            warnings.append(f"unknown theme {wanted!r}; available: {', '.join(sorted(self.available_themes))}")
            wanted = DEFAULT_THEME if DEFAULT_THEME in self.available_themes else "textual-dark"
        self.theme = wanted
        if isinstance(settings.get("keymap"), dict):
            self.set_keymap(settings["keymap"])
        self.theme_changed_signal.subscribe(self, self._remember_theme)
        self.install_screen(MainScreen(mask_times=self.mask_times), name="main")
        await self.push_screen("main")
        self._update_title()
        for w in warnings:
            self.notify(w, severity="warning")
        for note in self.options.notes:
            self.main.add_log(note)
            self.notify(note, title="defaults")
        self.sample_metrics()
        key = missing_key(self.options.llm_model, self.options.llm_base_url)
        if key:
            self.offer_offline(key)
        else:
            self.boot()

    def offer_offline(self, key: str) -> None:
        msg = (f"No {key} in the environment: the {self.options.llm_model} backend cannot run.\n"
               f"Use the offline `{OFFLINE_LLM}` backend (the verified kernels shipped in tasks/library/, "
               "labelled as such), or set the key and restart.")
        self.main.add_log(f"no {key}: offered the {OFFLINE_LLM} backend")

        def chosen(choice: str | None) -> None:
            if choice == "library":
                self.options = self.options.with_(llm_model=OFFLINE_LLM)
                self._update_title()
                self.boot()
            elif choice == "setup":
                self.action_setup()
            else:
                self.main.set_status(f"no backend: set {key} and restart, or press o to pick another")

        self.push_screen(ChoiceScreen(msg, [("library", f"Use {OFFLINE_LLM}"), ("setup", "Setup…"),
                                            ("none", "Not now")], cancel_id="none"), chosen)

    def _update_title(self) -> None:
        label = getattr(getattr(self.agent, "backend", None), "label", None) or self.options.llm_model
        jobs = self.running()
        self.sub_title = (f"{self.options.title} · {label}" + (" · review" if not self.options.auto_approve else "")
                          + (f" · running {len(jobs)}" if jobs else ""))

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="discover")
    def boot(self) -> None:
        """Build the engine for the current options and discover the operators."""
        agent = self.agent_factory(self.options, self.bridge)
        specs = agent.discover()
        self.call_from_thread(self._booted, agent, specs)

    def _booted(self, agent: Any, specs: list) -> None:
        self.agent = agent
        if not self.is_running:
            return
        views = []
        for spec in specs:
            views.append(OpView(name=spec.name, class_name=spec.class_name, baseline_code=spec.source_code))
        self.main.auto_approve = self.options.auto_approve
        self.main.set_ops(self.options.title, self.options.level, views)
        agent.publish()  # every operator's state (kernels resumed from disk included), as events
        resumed = {name: getattr(st.status, "value", st.status) for name, st in getattr(agent, "states", {}).items()
                   if getattr(st, "path", None) and getattr(st.status, "value", st.status) != "pending"}
        for name, status in resumed.items():
            self.main.views[name].add(f"· resumed from {agent.states[name].path} ({status})\n")
        if resumed:
            self.main.select(self.main.selected)  # its stream pane shows the line just added
            self.main.add_log(f"resumed {len(resumed)} kernel(s) from {self.options.out_dir}; g generates the others")
        self._update_title()
        self.main.add_log(f"{len(views)} operators · backend {getattr(agent.backend, 'label', '?')} · g generates all")
        if self.options.start:
            self.options = self.options.with_(start=False)  # once: a setup change does not restart it
            self.action_run_all()

    # ---- engine events --------------------------------------------------------------------
    def on_engine_flush(self, _: EngineFlush) -> None:
        items = self.bridge.drain()
        if not self.is_running:  # shutting down: the screens are going away
            return
        for item in items:
            if isinstance(item, dict):
                self.main.apply_stream(item)
                continue
            self.main.apply_event(item)

    def on_metrics_sampled(self, message: MetricsSampled) -> None:
        self.last_metrics = message.snapshot
        if not self.is_running:
            return
        try:
            panel = self.main.query_one(GpuPanel)
        except NoMatches:  # a sample that lands while the app starts or shuts down
            return
        panel.update_snapshot(message.snapshot)

    @work(thread=True, exclusive=True, group="metrics", exit_on_error=False, name="metrics")
    def sample_metrics(self) -> None:
        worker = get_current_worker()
        try:
            while not (worker.is_cancelled or self._closing or self._closed):
                self.post_message(MetricsSampled(self.sampler.sample()))
                worker.cancelled_event.wait(self.sample_interval)
        finally:
            close = getattr(self.sampler, "close", None)
            if close:
                close()

    @on(Worker.StateChanged)
    def worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "metrics" or not self.is_running:
            return
        ended = event.state in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED)
        if worker.group == "e2e" and ended and self.main.e2e == "running":
            self.main.e2e = None  # it ended without a report (an E2EResult arrives before this)
        if event.state == WorkerState.ERROR:
            exc = worker.error
            text = str(exc) if isinstance(exc, FastKernelsError) else f"{type(exc).__name__}: {exc}"
            self.main.add_log(f"✗ {worker.name}: {text}")
            if worker.name == "discover":  # no engine: the whole message, not 4 lines of a small pane
                self.push_screen(ChoiceScreen(f"The engine did not start:\n{text}",
                                              [("setup", "Setup…"), ("close", "Close")], cancel_id="close"),
                                 lambda choice: choice == "setup" and self.action_setup())
            else:
                self.notify(text, title=worker.name, severity="error", timeout=8)
        self._update_title()

    def running(self) -> list[str]:
        return [w.name for w in self.workers
                if w.group.split(":")[0] in ENGINE_GROUPS and w.state in (WorkerState.PENDING, WorkerState.RUNNING)]

    def _busy(self, *groups: str) -> bool:
        return any(w.group.split(":")[0] in groups and w.state in (WorkerState.PENDING, WorkerState.RUNNING)
                   for w in self.workers)

    # ---- engine calls ---------------------------------------------------------------------
    def _need_agent(self) -> bool:
        if self.agent is None:
            self.notify("the engine is not ready (see the status pane)", severity="warning")
            return False
        return True

    def _need_op(self) -> str | None:
        op = self.main.current()
        if op is None:
            self.notify("select an operator first", severity="warning")
        return op

    def _engine_job(self, fn: Callable[[], Any], *, name: str, group: str,
                    then: Callable[[Any], None] | None = None, exclusive: bool = False) -> Worker:
        """Run one blocking engine call in a thread worker (what it changes comes back as engine
        events). `exclusive` cancels a not-yet-started job of the same group (per-op generation only: a
        second approve or steering note must never drop the first)."""

        def job():
            result = fn()
            if then is not None:
                self.call_from_thread(lambda: self.is_running and then(result))
            return result

        return self.run_worker(job, name=name, group=group, thread=True, exclusive=exclusive, exit_on_error=False)

    @work(thread=True, exclusive=True, group="pipeline", exit_on_error=False, name="run")
    def _run_pipeline(self) -> dict:
        return self.agent.run()

    def action_run_all(self) -> None:
        if not self._need_agent():
            return
        if self._busy("pipeline", "op"):
            self.notify("a generation is already running", severity="warning")
            return
        self.main.add_log("generating every operator")
        self._run_pipeline()

    def action_regenerate(self) -> None:
        if not self._need_agent() or not (op := self._need_op()):
            return
        if self._busy("pipeline"):
            self.notify("the whole run is generating; regenerate after it", severity="warning")
            return
        self.main.show_tab("stream")
        self._engine_job(lambda: self.agent.generate_op(op), name=f"generate {op}", group=f"op:{op}",
                         exclusive=True)

    def action_approve(self) -> None:
        self._review("approve")

    def action_reject(self) -> None:
        self._review("reject")

    def action_approve_all(self) -> None:
        """Approve every kernel waiting for review (passed validation and unit tests), in one job."""
        if not self._need_agent():
            return
        ops = [name for name, v in self.main.views.items() if v.status == "pending review"]
        if not ops:
            self.notify("no kernel waits for review", severity="warning")
            return

        def approve_all() -> list[str]:
            for op in ops:
                self.agent.approve(op)
            return ops

        self._review_job(approve_all, name="approve all",
                         then=lambda done: self.main.add_log(f"approved {len(done)}: {', '.join(done)}"))

    def _review(self, what: str) -> None:
        if not self._need_agent() or not (op := self._need_op()):
            return
        fn = getattr(self.agent, what)
        self._review_job(lambda: fn(op), name=f"{what} {op}",
                         then=lambda _: self.main.add_log(f"{op}: {what}{'d' if what.endswith('e') else 'ed'}"))

    def _review_job(self, fn: Callable[[], Any], *, name: str, then: Callable[[Any], None]) -> None:
        """An approve/reject job; `b` pressed right after it waits for it (`a b` typed ahead must
        benchmark the kernel just approved)."""
        done = threading.Event()
        self._reviews = [e for e in self._reviews if not e.is_set()] + [done]

        def job():
            try:
                return fn()
            finally:
                done.set()

        self._engine_job(job, name=name, group="review", then=then)

    def action_steer(self) -> None:
        self.main.query_one("#steer-input").focus()

    @on(SteeringBar.Steer)
    def steer(self, message: SteeringBar.Steer) -> None:
        if not self._need_agent():
            return
        op = None if message.all_ops else self._need_op()
        if op is None and not message.all_ops:
            return
        target = "every operator" if op is None else op
        # in a worker: the agent's lock may be held by a save (fsync) on another thread
        self._engine_job(lambda: self.agent.set_steering(op, message.note), name=f"steer {target}", group="steer")
        for name, view in self.main.views.items():
            if op is None or name == op:
                view.add(f"» steering for the next attempt: {message.note}\n")
                if name == self.main.selected:
                    self.main.stream.append(f"» steering for the next attempt: {message.note}\n")
        self.main.tree.focus()  # back where the keys work: `r` regenerates, not types "r"
        self.main.add_log(f"steering noted for {target}; r regenerates")
        self.notify(f"steering noted for {target}: the next attempt gets it", title="steer")

    @on(KernelEditor.SaveRequested)
    def save_edit(self, message: KernelEditor.SaveRequested) -> None:
        if not self._need_agent():
            return
        op, code = message.op, message.code
        self.main.editor.mark_saved()
        self.main.add_log(f"{op}: saved, re-checking")
        view = self.main.views.get(op)
        if view is not None:
            view.add("✎ edited by hand: saved, re-validating and re-benchmarking\n")
        self._engine_job(lambda: self.agent.submit_edit(op, code), name=f"check edit {op}", group=f"edit:{op}",
                         then=lambda st: self._edit_checked(op, st))

    def _edit_checked(self, op: str, state: Any) -> None:
        if not self.is_running:
            return
        status = getattr(getattr(state, "status", None), "value", getattr(state, "status", "?"))
        self.main.add_log(f"{op}: edit checked → {status}")
        self.notify(f"{op}: your edit is {status}", title="edit")

    @work(thread=True, exclusive=True, group="e2e", exit_on_error=False, name="e2e benchmark")
    def _run_e2e(self, after: list[threading.Event]) -> dict | None:
        for review in after:  # approvals given before `b` count, even if their jobs still run
            review.wait()
        return self.agent.run_e2e()

    def action_bench(self) -> None:
        if not self._need_agent():
            return
        reviews = [e for e in self._reviews if not e.is_set()]
        if not (self.options.auto_approve or reviews or any(v.status == "approved" for v in self.main.views.values())):
            self.notify("nothing approved yet: a approves the kernel under the cursor, A every passing one",
                        title="review", severity="warning")
            return
        self.main.e2e = "running"
        self.main.show_tab("e2e")
        self.main.add_log("end-to-end benchmark started")
        self._run_e2e(reviews)

    def action_export(self) -> None:
        """The approved kernels to `<out>-kernels` in the Hugging Face `kernels` layout
        (fastkernels.export), for `kernels` / `kernelize` to load."""
        if not self._need_agent():
            return
        ops = [name for name, v in self.main.views.items() if v.status == "approved"]
        if not ops:
            self.notify("nothing approved yet: a approves the kernel under the cursor, A every passing one",
                        title="export", severity="warning")
            return
        from fastkernels.export import export_approved

        out = Path(self.options.out_dir)
        dest = out.with_name(f"{out.name}-kernels")

        def done(result) -> None:
            self.main.add_log(f"exported {len(result.kernels)} approved kernel(s) to {result.out} "
                              "(Hugging Face kernels layout; its README.md says how to load it)")

        self.main.add_log(f"exporting {', '.join(ops)} to {dest}")
        self._engine_job(lambda: export_approved(out, self.options.level, ops, dest), name="export",
                         group="export", then=done)

    # ---- views ----------------------------------------------------------------------------
    def action_show_tab(self, tab: str) -> None:
        self.main.current()
        self.main.show_tab(tab)

    def action_diff_split(self) -> None:
        self.main.current()
        self.main.show_tab("diff")
        self.main.diff.toggle_split()

    def action_diff_against(self) -> None:
        self.main.current()
        self.main.show_tab("diff")
        self.main.diff.toggle_against()

    def action_next_theme(self) -> None:
        names = self.our_themes or sorted(self.available_themes)
        i = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(i + 1) % len(names)]
        self.notify(f"theme: {self.theme}")

    def _remember_theme(self, theme) -> None:
        if self.remember:
            try:
                save_settings(theme=theme.name)
            except OSError as exc:  # a read-only home must not break theme switching
                self.notify(f"could not remember the theme: {exc}", severity="warning")
        if self.screen_stack and self.main.is_attached:
            self.main.diff.show(self.main.view())  # pygments colours follow dark/light

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_history(self) -> None:
        self.push_screen(HistoryScreen(model=self.options.model, level=self.options.level))

    def action_setup(self) -> None:
        def chosen(new: SessionOptions | None) -> None:
            if new is None:
                return
            if self.running():
                self.notify("work is running: change the setup once it is done", severity="warning")
                return
            self.options = new
            self.agent = None
            self._update_title()
            key = missing_key(new.llm_model, new.llm_base_url)
            if key:
                self.offer_offline(key)
            else:
                self.main.add_log(f"setup: {new.title} · {new.llm_model}")
                self.boot()

        self.push_screen(SetupScreen(self.options), chosen)

    async def action_quit(self) -> None:
        jobs = self.running()
        if not jobs:
            self.exit()
            return

        def chosen(choice: str | None) -> None:
            if choice == "quit":
                self.cancel_and_exit()

        self.push_screen(ConfirmQuit(jobs), chosen)

    def cancel_and_exit(self) -> None:
        """Quit while work runs: the engine cancels its run and kills its sandboxed jobs at once; the
        app waits up to QUIT_GRACE_S for the run to record itself as cancelled, then exits."""
        self.main.add_log("quitting: cancelling the run and killing its jobs")
        if self._executor is not None:
            self._executor.wait_at_close = False
        if self.agent is not None:
            self.agent.cancel(kill_jobs=True)
        started = time.monotonic()

        def settled() -> None:
            if self._busy(*ENGINE_GROUPS) and time.monotonic() - started < QUIT_GRACE_S:
                return
            for w in self.workers:
                w.cancel()
            self.exit()

        self.set_interval(0.05, settled)


def main(argv: list[str] | None = None) -> int:
    """`fastkernels-tui [options]`: the same as `fastkernels tui [options]`."""
    import argparse

    from fastkernels_tui.cli import add_args, run

    parser = argparse.ArgumentParser(prog="fastkernels-tui", description="the fastkernels cockpit")
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except FastKernelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
