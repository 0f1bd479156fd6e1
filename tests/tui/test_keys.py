"""Keys act on what the screen shows when they are handled: keys typed ahead (faster than the
tree's highlight message travels) and focus that a user can always get back to the tree."""

from __future__ import annotations

from textual import events
from textual.widgets import Input, TextArea

from fastkernels_tui.screens.help import HelpScreen

from .test_pilot import SIZE, booted, idle


def type_ahead(app, *keys: str) -> None:
    """Queue key events back to back, as a fast typist or a terminal's paste does (the pilot's
    `press` lets the app settle after each key, which hides the race)."""
    for key in keys:
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)


async def test_typed_ahead_approve_and_reject_act_on_the_cursor_op(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("g")
        await idle(pilot, app)
        app.main.tree.focus()
        await pilot.pause(0.05)
        assert app.main.selected == "add_rms_norm"
        type_ahead(app, "down", "a")  # the cursor lands on attention: a approves attention
        await idle(pilot, app)
        type_ahead(app, "down", "down", "x")  # embedding, then rms_norm: rejects rms_norm
        await idle(pilot, app)
        type_ahead(app, "up", "up", "x")  # embedding, then attention: rejects attention
        await idle(pilot, app)
        calls = [c for c in agents[0].calls if c[0] in ("approve", "reject")]
        assert calls == [("approve", "attention"), ("reject", "rms_norm"), ("reject", "attention")]
        assert app.main.selected == "attention"
        assert "attention" in str(app.main.query_one("#stream-header").render())  # what the header names
        assert app.main.views["attention"].status == "rejected"
        assert app.main.views["rms_norm"].status == "rejected"
        type_ahead(app, "down", "d")  # the diff shown is the one of the operator the cursor is on
        await pilot.pause(0.1)
        assert app.main.active_tab == "diff"
        assert "baseline embedding" in str(app.main.query_one("#diff-body").content.columns[1].header)


async def test_escape_returns_to_the_tree_from_the_editor_and_the_steering_box(make_app):
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        tree = app.main.tree
        assert app.focused is tree
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("e")
        area = app.main.query_one("#editor-text", TextArea)
        area.focus()
        await pilot.press("escape")
        assert app.focused is tree  # not the steering box, where `l` and `?` would become text
        await pilot.press("l")
        assert app.main.active_tab == "stream"  # keys work again at once
        await pilot.press("s")
        assert isinstance(app.focused, Input)
        await pilot.press("escape")
        assert app.focused is tree
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)  # `?` opened help, it was not typed into the box
        await pilot.press("escape")
        assert app.focused is tree and app.main.query_one("#steer-input", Input).value == ""


async def test_after_a_steering_note_r_regenerates(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("s", *"tile by 64", "enter")
        await idle(pilot, app)
        assert app.focused is app.main.tree
        await pilot.press("r")
        await idle(pilot, app)
        agent = agents[0]
        assert ("set_steering", "add_rms_norm", "tile by 64") in agent.calls
        assert ("generate_op", "add_rms_norm", None) in agent.calls
        assert app.main.query_one("#steer-input", Input).value == ""
        assert "tile by 64" in agent.prompts[-1][1]


async def test_help_lists_every_key_of_an_action(make_app):
    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("question_mark")
        keys = {desc: key for key, desc in app.screen.rows}
        assert keys["Quit"] == "q, ^q"  # the footer's key first
        assert keys["Back to the operator tree"] == "esc"
        assert keys["Help"].startswith("?")


async def test_typed_ahead_approve_then_bench_benchmarks_the_approved_kernel(make_app):
    app, agents = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")
        await idle(pilot, app)
        type_ahead(app, "a", "b")  # b arrives before the approve job has run
        await idle(pilot, app)
        agent = agents[0]
        assert ("approve", "add_rms_norm") in agent.calls and ("run_e2e",) in agent.calls
        assert agent.calls.index(("approve", "add_rms_norm")) < agent.calls.index(("run_e2e",))
        assert "passed" in str(app.main.query_one("#e2e-header").render())
