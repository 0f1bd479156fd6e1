"""The agent's orchestration: retries with the error fed back, parallel generation, atomic saves,
resume after a kill, review and edits. Runs the real sandboxed validation on tiny models."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fastkernels import events as ev
from fastkernels.agent.agent import Agent, AgentConfig, OpStatus
from fastkernels.agent.llm import get_backend
from fastkernels.agent.llm.base import Completion
from fastkernels.registry.tasks import baseline_dir, kernel_source, library_dir

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def fenced(code: str) -> str:
    return f"Here is the kernel.\n\n```python\n{code}\n```\n"


class Spy:
    """Wraps a backend and keeps every prompt it is given."""

    def __init__(self, inner):
        self.inner = inner
        self.label = inner.label
        self.name = inner.name
        self.prompts: list[tuple[str, int, str]] = []

    def generate(self, prompt, on_text, *, op, attempt, on_retry=None):
        self.prompts.append((op.name, attempt, str(prompt)))
        return self.inner.generate(prompt, on_text, op=op, attempt=attempt, on_retry=on_retry)


def test_validation_failure_is_fed_back_and_retried(tmp_path):
    replies = tmp_path / "replies" / "rms_norm"
    replies.mkdir(parents=True)
    good = (baseline_dir(1) / "rms_norm.py").read_text()
    bad = good.replace("class RMSNorm(", "class RmsNormKernel(")
    (replies / "1.md").write_text(fenced(bad))
    (replies / "2.md").write_text(fenced(good))
    spy = Spy(get_backend(f"replay:{tmp_path / 'replies'}"))
    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], skip_unit_tests=True,
                              e2e=False, out_dir=tmp_path / "out"), sink=rec, backend=spy)
    agent.discover()
    state = agent.generate_op("rms_norm")

    assert state.status == OpStatus.APPROVED and state.attempt == 2
    failed = rec.of(ev.ValidationFailed)
    assert len(failed) == 1 and "RMSNorm" in failed[0].error and "RmsNormKernel" in failed[0].error
    assert [e.attempt for e in rec.of(ev.RetryScheduled)] == [2]
    (_, a1, p1), (_, a2, p2) = spy.prompts
    assert (a1, a2) == (1, 2)
    assert failed[0].error.splitlines()[0] in p2, "the retry prompt must carry the validation error"
    assert "RmsNormKernel" in p2 and "RmsNormKernel" not in p1, "the retry prompt must show the failed code"
    saved = tmp_path / "out" / "L1" / "rms_norm.py"
    assert saved.read_text() == good
    assert json.loads(saved.with_suffix(".json").read_text())["status"] == "approved"


def test_retries_stop_after_max_retries(tmp_path):
    replies = tmp_path / "replies"
    replies.mkdir()
    (replies / "silu_and_mul.md").write_text("I cannot write this kernel.")  # no code at all
    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["silu_and_mul"], max_retries=2,
                              skip_unit_tests=True, e2e=False, out_dir=tmp_path / "out"),
                  sink=rec, backend=get_backend(f"replay:{replies}"))
    agent.discover()
    state = agent.generate_op("silu_and_mul")
    assert state.attempt == 3 and state.status == OpStatus.INVALID
    assert [e.stage for e in rec.of(ev.ValidationFailed)] == ["extract"] * 3
    assert not (tmp_path / "out" / "L1" / "silu_and_mul.py").exists()


class SlowBackend:
    """Streams the baseline back slowly, like a remote LLM: `seconds` per reply."""

    name = "slow"
    label = "slow test backend"

    def __init__(self, seconds: float, hang_on: str | None = None):
        self.seconds = seconds
        self.hang_on = hang_on

    def generate(self, prompt, on_text, *, op, attempt, on_retry=None):
        if op.name == self.hang_on:
            time.sleep(3600)
        text = fenced(op.source_code)
        steps = 10
        for i in range(steps):
            on_text(text[i * len(text) // steps:(i + 1) * len(text) // steps])
            time.sleep(self.seconds / steps)
        return Completion(text=text, origin="baseline")


def test_operators_generate_in_parallel(tmp_path):
    rec = ev.Recorder()
    ops = ["rms_norm", "silu_and_mul", "embedding", "add_rms_norm"]
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=ops, skip_unit_tests=True, e2e=False,
                              concurrency=4, out_dir=tmp_path / "out"), sink=rec, backend=SlowBackend(3.0))
    agent.discover()
    agent._generate_all(ops)
    starts = {e.op: e.ts for e in rec.of(ev.GenerationStarted)}
    ends = {e.op: e.ts for e in rec.of(ev.GenerationFinished)}
    assert set(starts) == set(ops) and set(ends) == set(ops)
    # Parallel means every stream started before any finished (one after another, each would start
    # after the previous one's end); no wall-clock figure, so a busy machine cannot fail it.
    assert max(starts.values()) < min(ends.values()), f"streams did not overlap: {starts} {ends}"
    assert all(agent.states[o].status == OpStatus.APPROVED for o in ops)
    assert len(rec.of(ev.TextDelta)) == 40


def test_resume_after_kill_keeps_saved_kernels(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_agent import SlowBackend
        from fastkernels.agent.agent import Agent, AgentConfig
        agent = Agent(AgentConfig(model={MODEL!r}, level=1, tiny=True, skip_unit_tests=True, e2e=False,
                                  ops=["rms_norm", "silu_and_mul", "embedding"], concurrency=3,
                                  out_dir={str(out)!r}), backend=SlowBackend(0.2, hang_on="embedding"))
        agent.run()
    """)
    env = {**os.environ, "FASTKERNELS_TRACKING": "0"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.time() + 120
        done = [out / "L1" / f"{op}.json" for op in ("rms_norm", "silu_and_mul")]
        while time.time() < deadline and not all(
            p.exists() and json.loads(p.read_text())["status"] == "approved" for p in done
        ):
            assert proc.poll() is None, "the agent exited before it was killed"
            time.sleep(0.2)
        assert all(p.exists() for p in done), "kernels were not saved as they were accepted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "L1" / "embedding.py").exists()
    for kernel in (out / "L1").glob("*.py"):  # a torn temp file may remain; never a torn kernel
        compile(kernel.read_text(), str(kernel), "exec")

    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, skip_unit_tests=True, e2e=False, resume=True,
                              ops=["rms_norm", "silu_and_mul", "embedding"], out_dir=out),
                  sink=rec, backend=get_backend("library"))
    agent.discover()
    summary = agent.run()
    assert [e.op for e in rec.of(ev.GenerationStarted)] == ["embedding"]
    assert summary["passing"] == 3
    assert any("resumed: 2" in m.text for m in rec.of(ev.Message))


def test_review_edit_approve_reject(tmp_path):
    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], skip_unit_tests=True, e2e=False,
                              auto_approve=False, out_dir=tmp_path / "out"),
                  sink=rec, backend=get_backend("library"))
    agent.discover()
    state = agent.generate_op("rms_norm")
    assert state.status == OpStatus.PENDING_REVIEW
    assert agent._e2e_candidates() == {}, "with review on, nothing unapproved goes end to end"
    broken = state.code.replace("class RMSNorm(", "class Nope(")
    state = agent.submit_edit("rms_norm", broken)
    assert state.status == OpStatus.INVALID
    assert (tmp_path / "out" / "L1" / "rms_norm.py").read_text() == broken, "an edit is on disk at once"
    state = agent.submit_edit("rms_norm", (baseline_dir(1) / "rms_norm.py").read_text())
    assert state.status == OpStatus.PENDING_REVIEW
    agent.approve("rms_norm")
    assert set(agent._e2e_candidates()) == {"rms_norm"}
    agent.reject("rms_norm")
    assert agent._e2e_candidates() == {}
    assert json.loads((tmp_path / "out" / "L1" / "rms_norm.json").read_text())["status"] == "rejected"


def test_steering_note_reaches_the_next_prompt(tmp_path):
    spy = Spy(get_backend("library"))
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm", "silu_and_mul"],
                              skip_unit_tests=True, e2e=False, out_dir=tmp_path / "out"), backend=spy)
    agent.discover()
    agent.set_steering(None, "use a persistent grid")
    agent.generate_op("rms_norm", steering="two rows per program")
    agent.generate_op("silu_and_mul")
    (op1, _, p1), (op2, _, p2) = spy.prompts
    assert "use a persistent grid" in p1 and "two rows per program" in p1
    assert "use a persistent grid" in p2 and "two rows per program" not in p2


def test_unknown_op_and_bad_flags_are_clear(tmp_path):
    from fastkernels.errors import UsageError

    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["nope"], out_dir=tmp_path),
                  backend=get_backend("library"))
    with pytest.raises(UsageError, match="unknown operator"):
        agent.discover()
    with pytest.raises(UsageError, match="max-retries"):
        AgentConfig(model=MODEL, level=1, max_retries=-1)


def test_kernel_blamed_end_to_end_is_regenerated(tmp_path):
    """A kernel that passes validation and the unit benchmark but raises inside the model: the
    end-to-end run blames it, the agent regenerates it with the failure in the prompt, and the
    second end-to-end run passes."""
    good = kernel_source(library_dir(1) / "rms_norm.py")
    # The unit shapes of the tiny workload have 32 and 2 rows; decoding one sequence in the model
    # hands the norm a single row.
    model_only_bug = good.replace(
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
        "        if x.numel() == x.shape[-1]:\n"
        "            raise RuntimeError('flattened rows only')\n"
        "        return rms_norm(x, self.weight, self.variance_epsilon)",
    )
    assert model_only_bug != good
    replies = tmp_path / "replies" / "rms_norm"
    replies.mkdir(parents=True)
    (replies / "1.md").write_text(fenced(model_only_bug))
    (replies / "2.md").write_text(fenced(good))
    spy = Spy(get_backend(f"replay:{tmp_path / 'replies'}"))
    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], blame_rounds=1,
                              out_dir=tmp_path / "out"), sink=rec, backend=spy)
    agent.discover()
    summary = agent.run()

    blamed = rec.of(ev.KernelBlamed)
    assert blamed and blamed[0].op.endswith("rms_norm") and "flattened rows only" in blamed[0].reason
    assert [a for _, a, _ in spy.prompts] == [1, 2]
    assert "flattened rows only" in spy.prompts[1][2], "the regeneration prompt carries the run-time failure"
    results = rec.of(ev.E2EResult)
    assert [r.passed for r in results] == [False, True]
    assert summary["passing"] == 1 and summary["e2e"]["passed"]
    assert (tmp_path / "out" / "L1" / "rms_norm.py").read_text() == good
    # Gates ran in children started ahead: one still waits for the next gate (ended below).
    from fastkernels import sandbox
    from fastkernels.measure.unit import GATE_PRELOAD

    assert any(k[1] == GATE_PRELOAD and c.proc.poll() is None for k, c in sandbox._warm.items())
    sandbox.shutdown_warm()
    # The last end-to-end report and the run's summary are kept on disk beside the kernels.
    saved_e2e = json.loads((tmp_path / "out" / "L1" / "e2e.json").read_text())
    assert saved_e2e["passed"] and saved_e2e["verdict"] == summary["e2e"]["verdict"]
    saved = json.loads(agent.summary_path().read_text())
    assert saved["passing"] == 1 and [r["op"] for r in saved["ops"]] == ["rms_norm"]
    from fastkernels.agent.progress import e2e_line

    line = e2e_line(agent.e2e_report)
    assert line.startswith("end to end: PASS") and "noise floor" in line


def test_cancel_stops_a_stream_in_flight(tmp_path):
    import threading

    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], skip_unit_tests=True, e2e=False,
                              out_dir=tmp_path / "out"), backend=SlowBackend(20.0))
    agent.discover()
    worker = threading.Thread(target=agent.generate_op, args=("rms_norm",))
    t0 = time.time()
    worker.start()
    time.sleep(0.5)
    agent.cancel()
    worker.join(timeout=30)
    # The stream checks for cancel between its 2 s chunks: ~2 s; 15 s is generous on a busy machine.
    assert not worker.is_alive() and time.time() - t0 < 15, "cancel must stop the 20 s stream"
    state = agent.states["rms_norm"]
    assert state.attempt == 1 and "cancelled" in (state.last_error or "")


def test_no_library_kernel_stops_after_one_attempt(tmp_path):
    """The library backend sends the baseline back for an op it has no kernel for; that fails the
    gate (no kernel of its own) and asking again cannot help."""
    rec = ev.Recorder()
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], e2e=False,
                              out_dir=tmp_path / "out"), sink=rec, backend=SlowBackend(0.1))
    agent.discover()
    state = agent.generate_op("rms_norm")
    assert state.attempt == 1 and state.status == OpStatus.FAILED
    assert "has no kernel for L1/rms_norm" in state.last_error
    assert any("has no kernel" in m.text for m in rec.of(ev.Message))


def test_cuda_builds_run_before_the_gpu_is_taken(tmp_path, monkeypatch):
    """A kernel that compiles CUDA is built (validated) outside the GPU lock, so builds of several
    operators overlap; a build error comes back without the GPU ever being held."""
    import contextlib

    import fastkernels.judge.gate as gate
    import fastkernels.judge.validate as validate
    from fastkernels.judge.validate import ValidationResult

    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm"], out_dir=tmp_path / "out"),
                  sink=ev.Recorder(), backend=get_backend("library"))
    agent.discover()
    calls = []

    class OneGpu:
        gpus = ["0"]

        @contextlib.contextmanager
        def acquire(self):
            calls.append("gpu")
            yield "0"

    agent.gpus = OneGpu()
    verdict = {"ok": True}
    monkeypatch.setattr(validate, "validate_kernel",
                        lambda code, name, **kw: calls.append("build") or ValidationResult(
                            verdict["ok"], None if verdict["ok"] else "nvcc: error: identifier x is undefined"))
    monkeypatch.setattr(gate, "run_gate", lambda spec, code, **kw: calls.append("gate") or (ValidationResult(False, "stop"), None))
    state = agent.states["rms_norm"]
    cuda_code = "from torch.utils.cpp_extension import load_inline\n"
    agent._check(state, cuda_code)
    assert calls == ["build", "gpu", "gate"]
    calls.clear()
    agent._check(state, "import triton\n")  # nothing to compile: straight to the gate
    assert calls == ["gpu", "gate"]
    calls.clear()
    verdict["ok"] = False
    ok, error, _ = agent._check(state, cuda_code)
    assert not ok and "identifier x is undefined" in error and calls == ["build"]


def test_summary_shows_speedups_against_eager_and_torch_compile_over_the_shapes(tmp_path):
    """The summary table gives both bars, lowest-highest over the shapes: a kernel 10x faster than
    eager but level with torch.compile must not read as a 10x win. Real unit reports from the H100
    (benchmarks/results/cuda_library/unit.json) stand in for a GPU run."""
    from rich.console import Console

    from fastkernels.agent.progress import summary_table
    from fastkernels.measure.unit import UnitReport

    root = Path(__file__).resolve().parents[2]
    units = json.loads((root / "benchmarks/results/cuda_library/unit.json").read_text())["ops"]
    agent = Agent(AgentConfig(model=MODEL, level=1, tiny=True, ops=["rms_norm", "silu_and_mul"], out_dir=tmp_path),
                  sink=ev.Recorder(), backend=get_backend("library"))
    agent.discover()
    for op in ("rms_norm", "silu_and_mul"):
        agent.states[op].unit = UnitReport.from_dict(units[op]["triton"])
        agent.states[op].status = OpStatus.APPROVED
    rows = {r["op"]: r for r in agent.summary()["ops"]}
    shapes = [s for s in units["rms_norm"]["triton"]["shapes"] if s.get("speedup_vs_compile")]
    assert rows["rms_norm"]["vs_compile"] == [min(s["speedup_vs_compile"] for s in shapes),
                                              max(s["speedup_vs_compile"] for s in shapes)]
    assert rows["rms_norm"]["vs_eager"][1] > 5 and rows["rms_norm"]["vs_compile"][1] < 2
    console = Console(width=200, record=True)
    console.print(summary_table(agent.summary()))
    text = console.export_text()
    assert "vs torch.compile" in text
    lo, hi = rows["rms_norm"]["vs_compile"]
    assert f"{lo:.2f}-{hi:.2f}x" in text


def test_sigterm_stops_the_agent_like_ctrl_c_and_leaves_no_process(tmp_path):
    """`kill` (SIGTERM) of `fastkernels agent` mid-run: exit 130 with the summary written, and no
    sandboxed job survives it."""
    import psutil

    out = tmp_path / "out"
    env = {**os.environ, "FASTKERNELS_TRACKING": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "fastkernels.cli", "agent", "--model", MODEL, "--level", "1",
                             "--tiny", "--llm-model", "library", "--concurrency", "1", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    family = []
    try:
        deadline = time.monotonic() + 240
        while not family or not list(out.glob("L1/*.py")):  # a gate child running and a kernel saved
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the agent saved no kernel in 240 s"
            family = psutil.Process(proc.pid).children(recursive=True) or family
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:
        p.kill()
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    summary = json.loads((out / "L1" / "summary.json").read_text())
    assert summary["interrupted"] is True
    # the queued operators never started: one at a time, stopped after the first was saved
    assert sum(r["status"] == "approved" for r in summary["ops"]) < len(summary["ops"]) == 6, summary["ops"]
    assert json.loads((out / "L1" / "summary.json").read_text())["total"] >= 1
    assert not alive, [p.pid for p in alive]


def test_resume_checks_again_what_it_cannot_trust(tmp_path):
    """A saved verdict holds for the kernel file it judged and the run it was judged in: a swapped
    file, a status file that is garbled, or a resume under another model is checked again (one
    line says why), and a kernel that fails that check is regenerated from it."""
    out = tmp_path / "out"
    ops = ["rms_norm", "silu_and_mul", "embedding"]

    def run(model=MODEL):
        rec = ev.Recorder()
        agent = Agent(AgentConfig(model=model, level=1, tiny=True, skip_unit_tests=True, e2e=False, resume=True,
                                  ops=ops, out_dir=out), sink=rec, backend=get_backend("library"))
        agent.discover()
        return agent, agent.run(), rec

    agent, summary, _ = run()
    assert summary["passing"] == 3
    side = json.loads((out / "L1" / "rms_norm.json").read_text())
    assert side["run"] == {"model": MODEL, "tiny": True, "tp": 1, "level": 1, "cuda_only": False}
    assert len(side["code_sha256"]) == 64

    _, summary, rec = run()  # nothing changed: nothing is checked or generated
    assert not rec.of(ev.GenerationStarted) and not rec.of(ev.ValidationFailed) and summary["passing"] == 3

    # a kernel file swapped for one that does not define the class; a garbled status file
    (out / "L1" / "silu_and_mul.py").write_text((out / "L1" / "rms_norm.py").read_text())
    (out / "L1" / "embedding.json").write_text("null")
    agent, summary, rec = run()
    said = [m.text for m in rec.of(ev.Message)]
    assert "L1/silu_and_mul: the kernel file changed since it was judged: checked again" in said, said
    assert "L1/embedding: its status file is missing or unreadable: checked again" in said, said
    assert [e.op for e in rec.of(ev.ValidationFailed)] == ["silu_and_mul"]  # the swap fails its check...
    assert [e.op for e in rec.of(ev.GenerationStarted)] == ["silu_and_mul"]  # ...and is regenerated
    assert summary["passing"] == 3 and "class SiluAndMul" in agent.states["silu_and_mul"].code

    # the same folder resumed for another model: every kernel is checked for it, none regenerated
    _, summary, rec = run("Qwen/Qwen3-8B")
    said = [m.text for m in rec.of(ev.Message)]
    assert sum("judged for another run (model 'meta-llama/Llama-3.1-8B-Instruct' there, 'Qwen/Qwen3-8B' here)"
               in m for m in said) == 3, said
    assert not rec.of(ev.GenerationStarted) and summary["passing"] == 3
