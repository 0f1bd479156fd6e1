"""Drive every cockpit action through Textual's pilot, on a fake agent that emits the engine's real
events (tests/tui/fake_agent.py), and check what the user sees and what reached the engine."""

from __future__ import annotations

import asyncio
import json

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.widgets import Input, Log, Static, Switch, TextArea

from fastkernels_tui.options import SessionOptions, resolve_defaults
from fastkernels_tui.screens.dialogs import ChoiceScreen, ConfirmQuit
from fastkernels_tui.screens.help import HelpScreen
from fastkernels_tui.screens.history import HistoryScreen
from fastkernels_tui.settings import load_settings

from .conftest import MODEL

SIZE = (160, 48)


async def until(pilot, cond, timeout: float = 15.0, what: str = "condition"):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def booted(pilot, app):
    await until(pilot, lambda: app.agent is not None and app.main.views, what="discovery")


async def idle(pilot, app):
    await pilot.pause(0.05)
    await until(pilot, lambda: not app.running(), what="engine work to finish")
    await pilot.pause(0.05)


def log_text(app) -> str:
    return "\n".join(app.main.query_one("#stream-log", Log).lines)


def static_text(widget: Static) -> str:
    return str(widget.render())


async def test_generate_all_streams_every_op_and_switching_shows_each_stream(make_app):
    app, agents = make_app(fail_first={"rms_norm"})
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        ops = list(app.main.views)
        assert ops == ["add_rms_norm", "attention", "embedding", "rms_norm", "rotary_embedding", "silu_and_mul"]
        assert "fake backend (tests)" in app.sub_title and "(tiny)" in app.sub_title
        await pilot.press("g")
        await idle(pilot, app)
        agent = agents[0]
        assert ("run",) in agent.calls
        assert {v.status for v in app.main.views.values()} == {"pending review"}
        # the selected op's stream shows its reply, header shows backend and tokens
        assert app.main.selected == "add_rms_norm"
        assert "class AddRMSNorm" in log_text(app)
        header = static_text(app.main.query_one("#stream-header", Static))
        assert "fake backend (tests)" in header and " tok" in header and "0 tok " not in header
        # switch to rms_norm in the tree: its own stream, with the failed attempt and the retry inline
        tree = app.main.tree
        tree.focus()
        while app.main.selected != "rms_norm":
            await pilot.press("down")
        text = log_text(app)
        assert "class RMSNorm" in text and "class AddRMSNorm" not in text
        assert "✗ import failed (attempt 1): ImportError: line 3" in text
        assert "↻ retry: attempt 2" in text and "── attempt 2 · fake backend (tests) ──" in text
        assert app.main.views["rms_norm"].attempt == 2
        # tree badges carry status and best speedup
        label = str(tree._op_nodes["rms_norm"].label)
        assert "review" in label and "2.00×" in label  # fake speedup 1.5 + 0.25 * attempt


async def test_diff_side_by_side_unified_and_against_previous(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")  # one attempt of the selected op
        await idle(pilot, app)
        await pilot.press("d")
        await pilot.pause(0.05)
        body = app.main.query_one("#diff-body", Static)
        assert isinstance(body.content, Table)
        table = body.content
        left, right = table.columns[1], table.columns[3]
        assert "baseline add_rms_norm" in str(left.header) and "candidate add_rms_norm" in str(right.header)
        assert any("# candidate attempt 1" in c.plain for c in right._cells)
        assert not any("# candidate attempt 1" in c.plain for c in left._cells)
        await pilot.press("u")
        unified = body.content
        assert isinstance(unified, Syntax)
        assert "+import torch  # candidate attempt 1" in unified.code and "-import torch\n" in unified.code
        await pilot.press("p")  # against the previous attempt: there is none yet
        assert "no previous code" in body.content.plain
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("d")
        await pilot.pause(0.05)
        code = body.content.code
        assert "-import torch  # candidate attempt 1" in code and "+import torch  # candidate attempt 2" in code


async def test_edit_and_save_writes_at_once_and_revalidates(make_app, tmp_path):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("e")
        area = app.main.query_one("#editor-text", TextArea)
        assert "class AddRMSNorm" in area.text
        area.focus()
        area.move_cursor((0, 0))
        await pilot.press(*"# tuned", "enter")  # typed keys reach the editor, not the app's bindings
        area.insert(" by hand", (0, 7))
        await pilot.press("ctrl+s")
        await idle(pilot, app)
        agent = agents[0]
        edits = [c for c in agent.calls if c[0] == "submit_edit"]
        assert len(edits) == 1 and edits[0][2].startswith("# tuned by hand\n")
        saved = tmp_path / "candidate" / "L1" / "add_rms_norm.py"
        assert saved.read_text().startswith("# tuned by hand\n")
        view = app.main.views["add_rms_norm"]
        assert view.status == "pending review" and view.best_speedup == 3.0  # re-benchmarked
        assert "3.00×" in str(app.main.tree._op_nodes["add_rms_norm"].label)
        assert "✎ edited by hand" in view.stream_text()
        # a broken edit: saved all the same, reported invalid with the line
        area.move_cursor((0, 0))
        await pilot.press(*"def (", "enter")
        await pilot.press("ctrl+s")
        await idle(pilot, app)
        assert saved.read_text().startswith("def (\n")
        assert view.status == "invalid"
        assert "✗ static failed" in view.stream_text() and "SyntaxError: line 1" in view.stream_text()
        assert json.loads(saved.with_suffix(".json").read_text())["status"] == "invalid"


async def test_approve_and_reject_reach_the_engine_and_the_tree(make_app, tmp_path):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("g")
        await idle(pilot, app)
        await pilot.press("a")
        await idle(pilot, app)
        app.main.tree.focus()
        await pilot.press("down")
        assert app.main.selected == "attention"
        await pilot.press("x")
        await idle(pilot, app)
        agent = agents[0]
        assert ("approve", "add_rms_norm") in agent.calls and ("reject", "attention") in agent.calls
        assert app.main.views["add_rms_norm"].status == "approved"
        assert app.main.views["attention"].status == "rejected"
        assert "approved" in str(app.main.tree._op_nodes["add_rms_norm"].label)
        side = tmp_path / "candidate" / "L1" / "attention.json"
        assert json.loads(side.read_text())["status"] == "rejected"
        assert {"add_rms_norm: approved", "attention: rejected"} <= set(app.main.log_lines)


async def test_user_keymap_rebinds_by_binding_id(make_app):
    from fastkernels_tui.settings import save_settings

    save_settings(keymap={"approve": "y"})
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("a")  # no longer bound
        await idle(pilot, app)
        assert ("approve", "add_rms_norm") not in agents[0].calls
        await pilot.press("y")
        await idle(pilot, app)
        assert ("approve", "add_rms_norm") in agents[0].calls


async def test_steering_note_reaches_the_next_prompt(make_app):
    app, agents = make_app(real_prompts=True, ops=["add_rms_norm", "silu_and_mul"])
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("s")
        assert isinstance(app.focused, Input)
        await pilot.press(*"use a")  # typed keys go to the input, not to the app's bindings
        app.focused.insert_text_at_cursor(" single pass with fp32 accumulation")
        await pilot.press("enter")
        await idle(pilot, app)
        agent = agents[0]
        assert ("set_steering", "add_rms_norm", "use a single pass with fp32 accumulation") in agent.calls
        app.main.tree.focus()
        await pilot.press("r")
        await idle(pilot, app)
        op, prompt = agent.prompts[-1]
        assert op == "add_rms_norm" and "use a single pass with fp32 accumulation" in prompt
        assert "» steering for the next attempt" in log_text(app)
        # for all operators: the switch on, the note goes to every op's next prompt
        await pilot.press("s")
        app.main.query_one("#steer-all", Switch).value = True
        app.focused.insert_text_at_cursor("avoid atomics")
        await pilot.press("enter")
        await idle(pilot, app)
        assert ("set_steering", None, "avoid atomics") in agent.calls
        app.main.tree.focus()
        await pilot.press("g")
        await idle(pilot, app)
        prompts = {o: p for o, p in agent.prompts[1:]}
        assert set(prompts) == set(app.main.views) and all("avoid atomics" in p for p in prompts.values())


async def test_benchmark_runs_on_approved_kernels_and_shows_the_report(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("b")  # nothing approved yet: the cockpit says so and starts nothing
        await idle(pilot, app)
        assert any("nothing approved yet" in n.message for n in app._notifications)
        assert ("run_e2e",) not in agents[0].calls
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("a")
        await idle(pilot, app)
        await pilot.press("b")
        await idle(pilot, app)
        assert app.main.active_tab == "e2e"
        assert "passed" in static_text(app.main.query_one("#e2e-header", Static))
        table = app.main.query_one("#e2e-table")
        rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}
        assert rows["greedy token match"] == "1" and rows["teacher-forced top-1 agreement"] == "0.998"
        assert rows["decode speedup"] == "1.31" and rows["decode tokens/s, kernels"] == "124.7"
        assert rows["kernels"] == "add_rms_norm"  # only the approved one
        assert list(rows)[:2] == ["verdict", "greedy token match"]  # headline figures first
        # unit panel of the approved op: one row per shape, with the bar chart
        await pilot.press("n")
        unit = app.main.query_one("#unit-table")
        assert unit.row_count == 2
        assert [str(unit.get_row_at(i)[0]) for i in range(2)] == ["prefill bf16", "decode bf16"]
        assert str(unit.get_row_at(0)[5]) == "1.75" and str(unit.get_row_at(0)[7]) == "41"
        # per call with launch cost, over the compiled baseline: a decode-size call can lose there
        assert [str(unit.get_row_at(i)[8]) for i in range(2)] == ["1.40", "0.62"]


async def test_theme_switches_live_and_is_remembered(make_app):
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        assert app.theme == "fastkernels-ember"
        assert {"fastkernels-ember", "fastkernels-paper", "fastkernels-green"} <= set(app.available_themes)
        await pilot.press("t")
        await pilot.pause(0.05)
        assert app.theme == "fastkernels-green"  # the files in name order: ember, green, paper
        assert load_settings()["theme"] == "fastkernels-green"
    # a new app with no --theme starts with the remembered one
    app2, _ = make_app(options=SessionOptions(model=MODEL, tiny=True, llm_model="library"))
    async with app2.run_test(size=SIZE) as pilot:
        await pilot.pause(0.05)
        assert app2.theme == "fastkernels-green"


async def test_user_theme_file_is_loaded(make_app, tmp_path, monkeypatch):
    themes = tmp_path / "config" / "themes"
    themes.mkdir(parents=True)
    (themes / "mine.toml").write_text('name = "my-night"\ndark = true\nprimary = "#112233"\n')
    (themes / "broken.toml").write_text('name = "oops"\nprimry = "#000"\n')
    app, _ = make_app(options=SessionOptions(model=MODEL, tiny=True, llm_model="library", theme="my-night"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.05)
        assert app.theme == "my-night"
        assert "oops" not in app.available_themes


async def test_quit_asks_while_work_runs_and_cancels(make_app):
    import threading

    hold = threading.Event()
    app, agents = make_app(hold=hold)
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("g")
        await until(pilot, lambda: app.main.views["add_rms_norm"].status == "generating", what="generation")
        await pilot.press("q")
        await pilot.pause(0.05)
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.click("#stay")
        await pilot.pause(0.05)
        assert not isinstance(app.screen, ConfirmQuit) and app.is_running
        await pilot.press("q")
        await pilot.pause(0.05)
        await pilot.click("#quit")
        hold.set()
        await pilot.pause(0.2)
        assert ("cancel", True) in agents[0].calls
    assert app.return_code == 0


async def test_quit_without_work_exits_at_once(make_app):
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("q")
        await pilot.pause(0.1)
        assert not app.is_running


async def test_no_api_key_offers_the_library_backend(make_app):
    opts = SessionOptions(model=MODEL, tiny=True, llm_model="claude-opus-4-6", theme="fastkernels-ember")
    app, agents = make_app(options=opts)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        assert isinstance(app.screen, ChoiceScreen)
        assert "No ANTHROPIC_API_KEY" in static_text(app.screen.query_one("#dialog-message", Static))
        assert not agents  # nothing was started against a backend that cannot run
        await pilot.click("#library")
        await booted(pilot, app)
        assert agents[0].options.llm_model == "library" and app.options.llm_model == "library"


def test_defaults_without_gpu_pick_the_tiny_llama_and_say_so():
    opts = resolve_defaults(None, None, False, None, gpu=False)
    assert (opts.model, opts.level, opts.tiny) == ("meta-llama/Llama-3.1-8B-Instruct", 1, True)
    assert "No NVIDIA GPU" in opts.notes[0] and "tiny" in opts.notes[0]
    full = resolve_defaults(None, None, False, None, gpu=True)
    assert not full.tiny and not full.notes
    named = resolve_defaults("Qwen/Qwen3-8B", 2, False, "library", gpu=True)
    assert not named.tiny and named.level == 2  # an explicit model is taken as asked


async def test_gpu_panel_with_and_without_nvidia(make_app):
    app, _ = make_app(gpu=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.is_running and app.main.query("#gpu0-util"), what="GPU widgets")
        await pilot.pause(0.1)
        panel = app.main.query_one("#gpu-panel")
        texts = " ".join(static_text(s) for s in panel.query(Static))
        assert "NVIDIA H100 80GB HBM3" in texts and "87%" in texts and "512/700 W" in texts and "1980 MHz" in texts
        assert "CPU 25% of 16 cores" in texts
    app, _ = make_app(gpu=False, options=SessionOptions(model=MODEL, tiny=True, llm_model="library",
                                                        notes=["No NVIDIA GPU here: starting on the tiny model"]))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "NVML unavailable" in static_text(app.main.query_one("#gpu-note", Static)),
                    what="no-GPU note")
        assert not app.main.query("#gpu0-util")
        assert "RAM 8.0/32.0 GiB" in static_text(app.main.query_one("#host-ram").query_one(Static))
        assert any("No NVIDIA GPU here" in line for line in app.main.log_lines)


async def test_command_palette_runs_our_commands(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("a")  # an approved kernel: the benchmark has something to run
        await idle(pilot, app)
        await pilot.press("ctrl+p")
        await pilot.pause(0.1)
        await pilot.press(*"end-to-end")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await idle(pilot, app)
        assert ("run_e2e",) in agents[0].calls


async def test_help_screen_lists_every_binding(make_app):
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("question_mark")
        await pilot.pause(0.05)
        assert isinstance(app.screen, HelpScreen)
        keys = dict((desc, key) for key, desc in app.screen.rows)
        assert keys["Generate all"] == "g" and keys["Approve"] == "a" and keys["Reject"] == "x"
        assert keys["Save & re-check"] == "^s"  # the editor's own binding
        assert keys["Split/unified diff"] == "u"  # hidden from the footer, listed here
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_history_screen_lists_a_tracked_run(make_app, tmp_path, monkeypatch):
    from fastkernels.track.tracking import tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker.configure(uri, enabled=True)
    try:
        with tracker.start_run(f"agent {MODEL} L1", params={"model": MODEL, "level": 1, "backend": "library"},
                               root=True):
            tracker.log_metrics({"kernels_passing": 5, "kernels_total": 6})
    finally:
        tracker.configure()
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("h")
        assert isinstance(app.screen, HistoryScreen)
        header = app.screen.query_one("#history-header", Static)
        await until(pilot, lambda: "loading" not in static_text(header), timeout=60, what="history")
        assert "1 shown" in static_text(header), static_text(header)
        row = [str(c) for c in app.screen.query_one("#history-table").get_row_at(0)]
        assert row[1] == MODEL and row[2] == "1" and row[3] == "library" and row[4] == "5/6"
        await pilot.press("escape")
        assert not isinstance(app.screen, HistoryScreen)


async def test_setup_screen_rebuilds_the_engine(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("o")
        await pilot.pause(0.05)
        app.screen.query_one("#setup-auto", Switch).value = True
        await pilot.click("#setup-apply")
        await until(pilot, lambda: len(agents) == 2 and app.agent is agents[1], what="new engine")
        assert agents[1].options.auto_approve and app.options.auto_approve


async def test_an_engine_that_cannot_start_shows_its_whole_error(make_app, tmp_path):
    from fastkernels_tui.app import FastKernelsApp

    from .conftest import FixedSampler

    opts = SessionOptions(model="foo/bar", tiny=True, llm_model="library", out_dir=tmp_path / "candidate",
                          theme="fastkernels-ember")
    app = FastKernelsApp(opts, sampler=FixedSampler(gpu=False), mask_times=True, remember=False)  # the real engine
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen), timeout=60, what="the error dialog")
        text = static_text(app.screen.query_one("#dialog-message", Static))
        assert "unknown model 'foo/bar'" in text and "mistralai/Mixtral-8x7B-Instruct-v0.1" in text
        await pilot.press("escape")
        assert not isinstance(app.screen, ChoiceScreen)


async def test_history_draws_each_operators_speedup_run_by_run(make_app, tmp_path, monkeypatch):
    from textual_plotext import PlotextPlot

    from fastkernels.track.tracking import tracker

    from .fake_agent import unit_report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracker.configure(uri, enabled=True)
    try:
        for speed in (1.5, 2.5):  # two runs: rms_norm got faster
            with tracker.start_run(f"agent {MODEL} L1", params={"model": MODEL, "level": 1, "backend": "library"},
                                   root=True):
                tracker.log_unit("rms_norm", unit_report("rms_norm", 1, speed), attempt=1)
    finally:
        tracker.configure()
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("h")
        plot = app.screen.query_one("#history-trend", PlotextPlot)
        await until(pilot, lambda: plot.display, timeout=90, what="the trend")
        drawn = Text.from_ansi(plot.plt.build()).plain
        assert "rms_norm" in drawn and "run by run" in drawn
    from fastkernels_tui.screens.history import load_runs, speedup_trend

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    trend = speedup_trend(load_runs(MODEL, 1))
    assert list(trend) == ["rms_norm"] and [x for x, _ in trend["rms_norm"]] == [1, 2]
    assert trend["rms_norm"][0][1] < trend["rms_norm"][1][1]  # oldest run first: the slower one
