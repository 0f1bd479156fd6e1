"""The UI answers a key press within 100 ms (a generous 5x that in the suite) while 8 operators stream at once and an end-to-end
benchmark reports progress. Measured with the pilot: from posting the key event to the moment the
selection has moved and the stream pane holds the newly selected operator's text (the handler
rewrites the whole pane: the heaviest reaction to a key in the cockpit).

Set FASTKERNELS_RECORD_BENCH=1 to write the figures to benchmarks/tui_latency.md."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

from textual import events

from fastkernels_tui.options import SessionOptions

from .conftest import MODEL
from .test_pilot import SIZE, booted, log_text, until

OPS = 8
PRESSES = 30
BUDGET_S = 0.100


async def test_key_press_latency_while_8_ops_stream_and_a_benchmark_runs(make_app, tmp_path):
    # 4-character deltas every 2 ms per op: ~500 deltas/s each, ~4000/s in all (~125 tokens/s
    # per op at 4 characters a token), for about 20 s: longer than the measurement.
    # auto-approve: `b` starts at once (with review on it waits for an approved kernel)
    opts = SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=tmp_path / "candidate",
                          theme="fastkernels-ember", auto_approve=True)
    app, agents = make_app(options=opts, n_ops=OPS, chunk_chars=4, delta_delay=0.002, repeat=12, bench_always=True,
                           e2e_delay=0.05)
    async with app.run_test(size=SIZE) as pilot:
        await booted(pilot, app)
        await pilot.press("g", "b")
        await until(pilot, lambda: sum(v.status == "generating" for v in app.main.views.values()) == OPS,
                    what="all ops generating")
        await until(pilot, lambda: all(v.chars > 400 for v in app.main.views.values()), what="streams flowing")
        app.main.tree.focus()
        await pilot.pause(0.05)
        names = list(app.main.views)
        seen_before = app.bridge.events_seen
        lat = []
        for i in range(PRESSES):
            key = "down" if (i // (OPS - 1)) % 2 == 0 else "up"
            idx = names.index(app.main.selected)
            want = names[idx + 1] if key == "down" else names[idx - 1]
            t0 = time.perf_counter()
            app.post_message(events.Key(key, None))
            while app.main.selected != want:
                await asyncio.sleep(0.0005)
            lat.append(time.perf_counter() - t0)
            await asyncio.sleep(0.03)  # a person's key rate, not a flood
        deltas = app.bridge.events_seen - seen_before
        streaming = sum(v.status == "generating" for v in app.main.views.values())
        e2e_running = app._busy("e2e")
        # the pane shows the selected op's own stream
        assert f"class {agents[0].states[app.main.selected].spec.class_name}" in log_text(app)
        app.agent.cancel()
    lat.sort()
    median, p90, worst = statistics.median(lat), lat[int(0.9 * len(lat)) - 1], lat[-1]
    report = (f"median {median * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms, max {worst * 1e3:.1f} ms over {PRESSES} "
              f"presses; {deltas} events during the measurement; {streaming}/{OPS} ops still streaming, "
              f"e2e running: {e2e_running}")
    print(report)
    if os.environ.get("FASTKERNELS_RECORD_BENCH"):
        _record(report)
    assert streaming == OPS and e2e_running, "the load ended before the measurement did"
    # The cockpit's target is BUDGET_S (the recorded figure is held to it). In the suite, which CI
    # runs on 2 cores busy with other tests, the bound is 5x that: a UI thread blocked by the streams
    # or the benchmark shows up as seconds, which still fails here.
    budget = BUDGET_S if os.environ.get("FASTKERNELS_RECORD_BENCH") else 5 * BUDGET_S
    assert p90 < budget, report
    assert median < budget / 2, report


def _record(report: str) -> None:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "tui_latency.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        "# Cockpit key-press latency under load\n\n"
        "While 8 operators stream at once (4-character deltas every 2 ms each, ~4000 events/s in all)\n"
        "and an end-to-end benchmark posts progress, a key press moves the selection in the operator\n"
        "tree; measured from posting the key event to the moment the new operator is selected and its\n"
        "whole stream is in the pane.\n\n"
        f"- Result: {report}\n"
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"Python {platform.python_version()}, headless pilot ({SIZE[0]}x{SIZE[1]})\n"
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
        "Command:\n\n"
        "```\nFASTKERNELS_RECORD_BENCH=1 python -m pytest -q -s tests/tui/test_latency.py\n```\n"
    )
