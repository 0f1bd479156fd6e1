"""The workflow a newcomer follows from the first screen: the next-step line says which key comes
next at each stage (g, review with a / x / A, b), `A` approves every passing kernel, `--start`
generates at once, and the real agent built for review mode leaves the end-to-end run to `b`."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from fastkernels_tui.cli import add_args, options_from_args
from fastkernels_tui.options import SessionOptions, real_agent_factory

from .conftest import MODEL
from .test_pilot import SIZE, booted, idle, static_text, until


def next_step(app) -> str:
    return static_text(app.main.query_one("#next-step", Static))


async def test_the_next_step_line_leads_from_launch_to_an_end_to_end_pass(make_app):
    app, agents = make_app(fail_first={"rms_norm"})
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await until(pilot, lambda: "press g" in next_step(app), what="the first hint")
        await pilot.press("b")  # too early: said so, nothing started
        await idle(pilot, app)
        assert ("run_e2e",) not in agents[0].calls
        await pilot.press("g")
        await idle(pilot, app)
        await until(pilot, lambda: "6 kernel(s) wait for your review" in next_step(app), what="the review hint")
        assert "A approves every passing one" in next_step(app)
        await pilot.press("A")
        await idle(pilot, app)
        assert {v.status for v in app.main.views.values()} == {"approved"}
        assert sorted(c[1] for c in agents[0].calls if c[0] == "approve") == sorted(app.main.views)
        await until(pilot, lambda: "press b to benchmark the 6 approved" in next_step(app), what="the bench hint")
        await pilot.press("b")
        await idle(pilot, app)
        await until(pilot, lambda: "end to end: PASS" in next_step(app), what="the verdict")
        assert "decode 1.31×" in next_step(app)


async def test_start_generates_without_a_key(make_app, tmp_path):
    opts = SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=tmp_path / "candidate",
                          theme="fastkernels-ember", start=True)
    app, agents = make_app(options=opts)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: agents and ("run",) in agents[0].calls, what="the run")
        await idle(pilot, app)
        assert {v.status for v in app.main.views.values()} == {"pending review"}


def test_cli_start_flag_and_review_mode_agent(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_args(parser)
    opts = options_from_args(parser.parse_args(["--tiny", "--llm-model", "library", "--start"]), gpu=False)
    assert opts.start and not opts.auto_approve and opts.resume  # the output folder is continued
    assert not options_from_args(parser.parse_args(["--tiny", "--fresh"]), gpu=False).resume
    review = real_agent_factory(opts.with_(out_dir=Path(tmp_path)), lambda e: None)
    assert not review.config.e2e and not review.config.auto_approve  # e2e waits for approvals (b)
    assert review.config.resume
    auto = real_agent_factory(opts.with_(auto_approve=True, out_dir=Path(tmp_path)), lambda e: None)
    assert auto.config.e2e and auto.config.auto_approve  # no review: the run ends end to end


async def test_unit_and_e2e_results_are_plotted(make_app):
    from textual_plotext import PlotextPlot

    app, _ = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("r")
        await idle(pilot, app)
        await pilot.press("n")
        await pilot.pause(0.1)
        unit = app.main.query_one("#unit-plot", PlotextPlot)
        assert unit.display
        drawn = unit.plt.build()
        assert "prefill bf16" in drawn and "decode bf16" in drawn and "wall ×compiled" in drawn
        await pilot.press("a", "b")
        await idle(pilot, app)
        e2e = app.main.query_one("#e2e-plot", PlotextPlot)
        assert e2e.display
        drawn = e2e.plt.build()
        assert "baseline eager" in drawn and "patched" in drawn and "decode tokens/s" in drawn
