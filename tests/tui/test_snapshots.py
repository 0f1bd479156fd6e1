"""The main screen pinned in its key states (pytest-textual-snapshot). Pinned: terminal size,
theme, the metrics (one fixed sample), times masked (no clock, no rates), kernels saved under a
relative path. Update after an intended change with `pytest tests/tui/test_snapshots.py
--snapshot-update` and look at the SVGs before committing them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fastkernels_tui.options import SessionOptions

from .conftest import MODEL

SIZE = (150, 42)


@pytest.fixture(autouse=True)
def _relative_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # kernels land in ./candidate: the same text on every machine


def opts(theme: str = "fastkernels-ember", **kw) -> SessionOptions:
    return SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=Path("candidate"),
                          theme=theme, **kw)


async def settle(pilot, cond, timeout: float = 20.0) -> None:
    app = pilot.app
    end = asyncio.get_running_loop().time() + timeout
    while not cond(app):
        assert asyncio.get_running_loop().time() < end, "timed out before the screenshot"
        await pilot.pause(0.02)


def booted(app) -> bool:
    if app.agent is None or not app.main.views:
        return False
    panel = app.main.query("#gpu0-util") or app.main.query("#gpu-note")
    return bool(panel) and len(app.main.query_one("#host-cpu").values) == 1


async def generated(pilot) -> None:
    await settle(pilot, booted)
    await pilot.press("g")
    await pilot.pause(0.05)
    await settle(pilot, lambda app: not app.running())
    await pilot.pause(0.05)


def make(make_app, **kw):
    app, _ = make_app(sample_interval=3600, **kw)  # one metrics sample: sparklines of one point
    return app


def test_snapshot_discovered(make_app, snap_compare):
    async def run_before(pilot):
        await settle(pilot, booted)
        pilot.app.clear_notifications()

    assert snap_compare(make(make_app, options=opts()), terminal_size=SIZE, run_before=run_before)


def test_snapshot_stream_with_retry_inline(make_app, snap_compare):
    async def run_before(pilot):
        await generated(pilot)
        pilot.app.main.tree.select_op("rms_norm")
        await settle(pilot, lambda app: app.main.selected == "rms_norm")
        await pilot.pause(0.05)

        # The log follows its end after a layout pass, which a loaded machine can still owe: put it at
        # the end now, as a finished stream shows.
        log = pilot.app.main.query_one("#stream-log")
        await settle(pilot, lambda app: log.line_count > 0 and log.max_scroll_y > 0)
        log.scroll_end(animate=False, immediate=True)
        await settle(pilot, lambda app: log.scroll_y >= log.max_scroll_y)
        await pilot.pause(0.05)
        pilot.app.clear_notifications()

    app = make(make_app, options=opts(), fail_first={"rms_norm"})
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_diff_side_by_side(make_app, snap_compare):
    async def run_before(pilot):
        await generated(pilot)
        await pilot.press("d")
        await pilot.pause(0.05)
        pilot.app.clear_notifications()

    assert snap_compare(make(make_app, options=opts()), terminal_size=SIZE, run_before=run_before)


def test_snapshot_unit_results(make_app, snap_compare):
    async def run_before(pilot):
        await generated(pilot)
        await pilot.press("a", "n")
        await settle(pilot, lambda app: not app.running())
        await pilot.pause(0.05)
        pilot.app.clear_notifications()

    assert snap_compare(make(make_app, options=opts()), terminal_size=SIZE, run_before=run_before)


def test_snapshot_e2e_report_light_theme_no_gpu(make_app, snap_compare):
    async def run_before(pilot):
        await generated(pilot)
        await pilot.press("a", "b")
        await pilot.pause(0.05)
        await settle(pilot, lambda app: not app.running())
        await pilot.pause(0.05)
        pilot.app.clear_notifications()

    app = make(make_app, options=opts(theme="fastkernels-paper"), gpu=False)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
