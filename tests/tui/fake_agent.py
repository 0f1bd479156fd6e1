"""A stand-in for `fastkernels.agent.agent.Agent` that implements its API and emits the real
engine events (fastkernels.events), fast and without child processes, so pilot tests can drive
every cockpit action in well under a second each.

It uses the real operator specs (discovery of the tiny Llama), the real OpState/OpStatus and the
real prompt builder, so "the steering note reaches the next prompt" is checked on the prompt the
engine would send. Kernels are "generated" by streaming the baseline file with a marker comment;
`fail_first` ops fail validation on their first attempt (then retry); edits are checked by
compiling them (a syntax error fails, like the real static check)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from fastkernels import events as ev
from fastkernels.agent.agent import OpState, OpStatus
from fastkernels.agent.prompts import build_generation_prompt

_SPECS: dict = {}


def tiny_specs(model: str, level: int):
    """Discovery is slow-ish (transformers configs): once per test session."""
    key = (model, level)
    if key not in _SPECS:
        from fastkernels.agent.agent import discover_operators

        _SPECS[key] = discover_operators(model, level, tiny=True)
    return _SPECS[key]


def unit_report(op: str, attempt: int, speed: float):
    """A report as the engine's unit benchmark returns it (a UnitReport)."""
    from fastkernels.measure.unit import ShapeResult, UnitReport

    shapes = [
        ShapeResult(shape="prefill", dtype="bfloat16", passed=True, baseline_eager_ms=0.02, baseline_compile_ms=0.015,
                    candidate_ms=round(0.02 / speed, 5), speedup_vs_eager=speed, speedup_vs_compile=speed * 0.75,
                    roofline_fraction=0.41, speedup_wall_vs_compile=speed * 0.8),
        ShapeResult(shape="decode", dtype="bfloat16", passed=True, baseline_eager_ms=0.01, baseline_compile_ms=0.009,
                    candidate_ms=round(0.02 / speed, 5), speedup_vs_eager=speed / 2,
                    speedup_vs_compile=speed / 2 * 0.9, roofline_fraction=0.12, speedup_wall_vs_compile=0.62),
    ]
    return UnitReport(op=op, passed=True, shapes=shapes, device="fake", timing_note="fake timings (tests)")


@dataclass
class FakeAgent:
    options: object
    sink: object
    chunk_chars: int = 24
    delta_delay: float = 0.0  # seconds between deltas (0: as fast as the thread goes)
    fail_first: set = field(default_factory=set)
    ops: list | None = None  # restrict to these ops
    e2e_delay: float = 0.0
    hold: threading.Event | None = None  # when set by the test, generation waits on it
    n_ops: int | None = None  # clone the discovered ops up to this many (op_2, ...)
    repeat: int = 1  # stream the reply this many times over (long streams)
    bench_always: bool = False  # run the fake e2e even with no accepted kernel (load tests)
    real_prompts: bool = False  # build the engine's real prompt (slow on first use: traces shapes)

    def __post_init__(self) -> None:
        self.backend = SimpleNamespace(label="fake backend (tests)", name="fake")
        self.states: dict[str, OpState] = {}
        self.calls: list[tuple] = []
        self.prompts: list[tuple[str, str]] = []  # (op, prompt text) of every attempt
        self._steering_all: str | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.out_dir = Path(self.options.out_dir)

    # -- helpers ------------------------------------------------------------------------------
    def emit(self, e) -> None:
        self.sink(e)

    def _save(self, st: OpState) -> None:
        path = self.out_dir / f"L{st.spec.level}" / f"{st.spec.name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(st.code or "")
        path.with_suffix(".json").write_text(json.dumps({"status": st.status.value, "attempt": st.attempt}))
        st.path = path
        self.emit(ev.KernelSaved(op=st.spec.name, path=str(path), status=st.status.value))
        self.publish(st.spec.name)

    def publish(self, *ops: str) -> None:
        """As the engine does: each operator's state as an OpChanged event."""
        for op in ops or list(self.states):
            self.emit(self.states[op].snapshot())

    def _accept(self) -> OpStatus:
        return OpStatus.APPROVED if self.options.auto_approve else OpStatus.PENDING_REVIEW

    # -- API ----------------------------------------------------------------------------------
    def discover(self):
        self.calls.append(("discover",))
        specs = [s for s in tiny_specs(self.options.model, self.options.level) if not self.ops or s.name in self.ops]
        if self.n_ops:
            base = list(specs)
            specs = [replace(base[i % len(base)], name=f"{base[i % len(base)].name}_{i}") for i in range(self.n_ops)]
        self.states = {s.name: OpState(spec=s) for s in specs}
        self.emit(ev.Discovered(model_id=self.options.model, level=self.options.level, ops=[s.name for s in specs]))
        return specs

    def set_steering(self, op, note) -> None:
        self.calls.append(("set_steering", op, note))
        with self._lock:
            if op is None:
                self._steering_all = note
            else:
                self.states[op].steering = note
        if op is not None:
            self.publish(op)

    def generate_op(self, op, steering=None):
        self.calls.append(("generate_op", op, steering))
        st = self.states[op]
        if steering:
            self.set_steering(op, steering)
        for _ in range(3):
            if self._cancel.is_set():
                break
            st.attempt += 1
            note = "\n".join(n for n in (self._steering_all, st.steering) if n) or None
            if self.real_prompts:
                prompt = build_generation_prompt(st.spec, False, steering=note)
                self.prompts.append((op, f"{prompt.system}\n{prompt.user}"))
            else:
                self.prompts.append((op, f"write {st.spec.class_name}\n{note or ''}"))
            st.status = OpStatus.GENERATING
            self.emit(ev.GenerationStarted(op=op, attempt=st.attempt, backend=self.backend.label))
            if self.hold is not None:
                self.hold.wait(10)
            code = st.spec.source_code.replace("import torch\n", f"import torch  # candidate attempt {st.attempt}\n", 1)
            text = f"Here is a faster {st.spec.class_name}.\n\n```python\n{code}```\n" * self.repeat
            for i in range(0, len(text), self.chunk_chars):
                if self._cancel.is_set():
                    break
                self.emit(ev.TextDelta(op=op, attempt=st.attempt, text=text[i:i + self.chunk_chars]))
                if self.delta_delay:
                    time.sleep(self.delta_delay)
            self.emit(ev.GenerationFinished(op=op, attempt=st.attempt, code=code, output_tokens=len(text) // 4,
                                            seconds=0.5))
            if st.code is not None:
                st.previous_code = st.code
            st.code = code
            if op in self.fail_first and st.attempt == 1:
                err = f"ImportError: line 3: no module named 'tritonx' (attempt {st.attempt})"
                st.status, st.last_error = OpStatus.INVALID, err
                self.publish(op)
                self.emit(ev.ValidationFailed(op=op, attempt=st.attempt, error=err, stage="import"))
                self.emit(ev.RetryScheduled(op=op, attempt=st.attempt + 1, reason=err))
                continue
            report = unit_report(op, st.attempt, 1.5 + 0.25 * st.attempt)
            st.unit, st.best_speedup = report, report.best_speedup
            self.emit(ev.UnitResult(op=op, attempt=st.attempt, passed=True, report=report))
            st.status, st.last_error = self._accept(), None
            self._save(st)
            return st
        return st

    def submit_edit(self, op, code):
        self.calls.append(("submit_edit", op, code))
        st = self.states[op]
        st.previous_code, st.code = st.code, code
        st.status = OpStatus.VALID
        self._save(st)  # on disk at once, before any checking
        try:
            compile(code, f"{op}.py", "exec")
        except SyntaxError as exc:
            st.status, st.last_error = OpStatus.INVALID, f"SyntaxError: line {exc.lineno}: {exc.msg}"
            self.emit(ev.ValidationFailed(op=op, attempt=st.attempt, error=st.last_error, stage="static"))
            self._save(st)
            return st
        report = unit_report(op, st.attempt, 3.0)
        st.unit, st.best_speedup = report, 3.0
        self.emit(ev.UnitResult(op=op, attempt=st.attempt, passed=True, report=report))
        st.status = self._accept()
        self._save(st)
        return st

    def approve(self, op) -> None:
        self.calls.append(("approve", op))
        st = self.states[op]
        st.status = OpStatus.APPROVED
        self._save(st)

    def reject(self, op) -> None:
        self.calls.append(("reject", op))
        st = self.states[op]
        st.status = OpStatus.REJECTED
        self._save(st)

    def run(self):
        self.calls.append(("run",))
        self.emit(ev.RunStarted(model_id=self.options.model, level=self.options.level, backend=self.backend.label,
                                tiny=True, device="cpu"))
        threads = [threading.Thread(target=self.generate_op, args=(op,)) for op in self.states]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary = {"passing": sum(s.status in (OpStatus.APPROVED, OpStatus.PENDING_REVIEW) for s in self.states.values()),
                   "total": len(self.states)}
        self.emit(ev.RunFinished(summary=summary, interrupted=self._cancel.is_set()))
        return summary

    def run_e2e(self):
        self.calls.append(("run_e2e",))
        wanted = {OpStatus.APPROVED} if not self.options.auto_approve else {OpStatus.APPROVED, OpStatus.PENDING_REVIEW}
        cands = [op for op, s in self.states.items() if s.status in wanted]
        if not cands and not self.bench_always:
            self.emit(ev.Message(text="no accepted kernel to benchmark end to end", level="warning"))
            return None
        steps = 4 if not self.bench_always else 400
        for i in range(steps):
            if self._cancel.is_set():
                return None
            self.emit(ev.E2EProgress(stage="decode", done=i + 1, total=steps, detail=f"{len(cands)} kernels"))
            if self.e2e_delay:
                time.sleep(self.e2e_delay)
        from fastkernels.measure.e2e import E2EReport

        report = E2EReport(model_id=self.options.model, level=self.options.level, tiny=True, candidates=cands,
                           passed=True, verdict="pass", token_match=1.0, token_match_noise=1.0,
                           top1_agreement=0.998, top1_agreement_noise=0.996, logit_rel_error=0.0041,
                           logit_rel_error_noise=0.0052,
                           timings={"baseline_eager": {"decode_tok_s": 95.2}, "patched": {"decode_tok_s": 124.7}},
                           speedup_decode=1.31, speedup_prefill=1.12, notes=["fake report (tests)"])
        self.emit(ev.E2EResult(passed=True, report=report))
        return report

    def cancel(self, kill_jobs: bool = False) -> None:
        self.calls.append(("cancel", kill_jobs))
        self._cancel.set()
