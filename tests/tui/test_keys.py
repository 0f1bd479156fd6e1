"""Keys act on what the screen shows when they are handled: keys typed ahead (faster than the
tree's highlight message travels) and focus that a user can always get back to the tree."""

from __future__ import annotations

from textual import events

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
