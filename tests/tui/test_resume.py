"""The cockpit opens on an output folder that holds kernels (a previous run's) and continues it, on
the real engine: the tree shows them with their status instead of `pending`, and `g` generates only
the operators without an accepted kernel, never overwriting an approved one."""

from __future__ import annotations

from pathlib import Path

from fastkernels.agent.agent import Agent, AgentConfig
from fastkernels_tui.app import FastKernelsApp
from fastkernels_tui.options import SessionOptions
from fastkernels_tui.screens.dialogs import ConfirmQuit

from .conftest import MODEL, FixedSampler
from .test_pilot import SIZE, log_text, until

ROOT = Path(__file__).resolve().parents[2]


def previous_run(out: Path) -> Path:
    """What an earlier session left: rms_norm approved and add_rms_norm waiting for review, saved by
    the engine itself (kernel file and status sidecar)."""
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=out,
                              auto_approve=False))
    agent.discover()
    for op in ("rms_norm", "add_rms_norm"):
        agent.states[op].code = (ROOT / "tasks" / "library" / "L1" / f"{op}.py").read_text()
    agent.approve("rms_norm")
    agent.states["add_rms_norm"].status = agent.states["add_rms_norm"].status.PENDING_REVIEW
    agent._save(agent.states["add_rms_norm"])
    return out / "L1" / "rms_norm.py"


async def test_reopening_shows_the_kernels_on_disk_and_g_keeps_the_approved_one(tmp_path):
    out = tmp_path / "candidate"
    approved = previous_run(out)
    before = approved.read_bytes()
    opts = SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=out,
                          theme="fastkernels-ember")
    app = FastKernelsApp(opts, sampler=FixedSampler(gpu=False), mask_times=True, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.agent is not None and app.main.views, timeout=120, what="discovery")
        await until(pilot, lambda: app.main.views["rms_norm"].status == "approved", what="the resumed states")
        views = app.main.views
        assert views["add_rms_norm"].status == "pending review" and views["attention"].status == "pending"
        assert views["rms_norm"].code == before.decode() and views["rms_norm"].path == str(approved)
        assert "approved" in str(app.main.tree._op_nodes["rms_norm"].label)
        assert f"resumed from {out / 'L1' / 'add_rms_norm.py'} (pending review)" in log_text(app)
        assert any("resumed 2 kernel(s)" in line for line in app.main.log_lines)
        await pilot.press("g")
        await until(pilot, lambda: any("resumed: 2 operator(s) already done" in line for line in app.main.log_lines),
                    timeout=60, what="the run to skip the kernels already done")
        await until(pilot, lambda: views["attention"].status != "pending", timeout=60, what="generation")
        assert views["rms_norm"].status == "approved" and views["add_rms_norm"].status == "pending review"
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmQuit), what="the quit dialog")
        await pilot.press("q")
    assert approved.read_bytes() == before


async def test_fresh_ignores_the_kernels_on_disk(tmp_path):
    out = tmp_path / "candidate"
    previous_run(out)
    opts = SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=out,
                          theme="fastkernels-ember", resume=False)
    app = FastKernelsApp(opts, sampler=FixedSampler(gpu=False), mask_times=True, remember=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.agent is not None and app.main.views, timeout=120, what="discovery")
        await pilot.pause(0.2)
        assert {v.status for v in app.main.views.values()} == {"pending"}


async def test_export_key_writes_the_approved_kernels_in_the_kernels_layout(tmp_path):
    out = tmp_path / "candidate"
    previous_run(out)  # rms_norm approved, add_rms_norm only waiting for review
    opts = SessionOptions(model=MODEL, level=1, tiny=True, llm_model="library", out_dir=out,
                          theme="fastkernels-ember")
    app = FastKernelsApp(opts, sampler=FixedSampler(gpu=False), mask_times=True, remember=False)
    dest = tmp_path / "candidate-kernels"
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.agent is not None and app.main.views, timeout=120, what="discovery")
        await until(pilot, lambda: app.main.views["rms_norm"].status == "approved", what="the resumed states")
        await pilot.press("E")
        await until(pilot, lambda: any("exported 1 approved kernel(s)" in line for line in app.main.log_lines),
                    timeout=60, what="the export")
        await pilot.press("q")
    assert (dest / "build.toml").is_file() and (dest / "README.md").is_file()
    exported = {p.name for p in (dest / "torch-ext").rglob("*.py")}
    assert "L1_rms_norm.py" in exported and "L1_add_rms_norm.py" not in exported  # only what was approved
