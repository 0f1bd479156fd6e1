"""The gate: is a candidate accepted? `run_gate(spec, code)` validates it (static checks, then
import, class and `__init__`: fastkernels.judge.validate) and unit-tests it; `run_unit` and
`run_unit_many` run the unit benchmark alone. Every call returns typed results and never raises for
anything the candidate does.

The verdict is never computed where the candidate ran. Per gate the parent draws the seeds of every
input and weight (fastkernels.measure.runner.Plan); the candidate's child (validation, then
fastkernels.measure.runner) writes its outputs into an exchange folder; a clean child
(fastkernels.judge.referee) rebuilds the inputs, computes the references and judges them, and on a
GPU times the baselines on the same input sets; then the candidate's child times the candidate on
the shapes that passed, and the referee checks the outputs of those timed calls. The parent joins
the figures here and rejects any the hardware cannot reach (above IMPOSSIBLE x the measured copy
bandwidth or matmul peak).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import asdict

from fastkernels.measure.runner import (
    GO,
    PICK,
    READY,
    TIMED,
    TIMED_CHECKS,
    Plan,
    RunnerJob,
    hear,
    read_dict,
    runner_job,
    say,
)
from fastkernels.measure.unit import (
    CPU_TIMING_NOTE,
    GATE_PRELOAD,
    ShapeResult,
    UnitReport,
)
from fastkernels.sandbox import cuda_present, run_job

# A figure above 2x the measured ceiling is not a fast kernel but a wrong clock. Not 1x: the copy
# figure counts DRAM reads and writes, and an op whose output fits in L2 can finish before its writes
# reach DRAM (at most ~2x for an op that writes as much as it reads); the matmul figure is cuBLAS's
# measured rate, some way under the datasheet's.
IMPOSSIBLE = 2.0


def kernel_names(code: str) -> list[str]:
    """Names of the kernels a candidate defines: @triton.jit functions and CUDA __global__ functions."""
    import ast

    from fastkernels.judge.validate import parse

    names = []
    try:
        tree = parse(code)
    except SyntaxError:
        return []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            target = node.func  # kernel = triton.jit(fn): the kernel carries fn's name
            if (getattr(target, "attr", None) or getattr(target, "id", None)) in ("jit", "autotune", "heuristics"):
                names.append(node.args[0].id)
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if (getattr(target, "attr", None) or getattr(target, "id", None)) in ("jit", "autotune", "heuristics"):
                    names.append(node.name)
                    break
    # __launch_bounds__(...) may stand before or after the return type (CUDA accepts both).
    bounds = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
    names += re.findall(rf"__global__\s+{bounds}void\s+{bounds}(\w+)", code)
    return sorted(set(names))



def run_unit(spec, code: str, *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
             timeout: float = 600.0, compile_baseline: bool = True, require_kernel: bool = True,
             compile_cache: bool = True, gpu: str | None = None, seed: int | None = None,
             compile_check: bool | None = None, _host_clock: bool = False) -> UnitReport:
    """Unit-test and time one candidate (the source of a file defining `spec.class_name`) for one
    OperatorSpec, the candidate in a sandboxed child and the verdict in another (see above); never
    raises for anything the candidate does. On a machine without a GPU the shapes are the small
    workload's, and nothing is timed. require_kernel=False accepts a candidate that runs no kernel
    of its own (only to time the baseline against itself: the stopwatch's fairness check).
    compile_cache=False times the compiled baseline now instead of reading this GPU's earlier
    figure. gpu: the id of the GPU to run on (the job's CUDA_VISIBLE_DEVICES, as
    fastkernels.gpu.devices hands them out); None leaves the environment's choice. seed: the plan's
    seed (None: drawn at random; the report's `seed` says which, to reproduce a run).
    compile_check: the module must also run under torch.compile(fullgraph=True) and, on a GPU, in a
    captured CUDA graph, and match there; None: yes, except for --cuda-only kernels (raw CUDA
    extensions are not PyTorch operators yet)."""
    from fastkernels.judge.validate import static_check

    gpu_here = cuda_present()
    if not gpu_here and not spec.tiny:
        # The Triton interpreter gets through the small workload in seconds, the full one never.
        spec = _small_spec(spec)
    label = f"{spec.key} {spec.class_name} candidate"
    bad = static_check(code, spec.class_name, cuda_only=cuda_only)
    if bad is not None:
        return _failed(spec, cuda_only, f"{label}: {bad.error}")
    if cuda_only and not gpu_here:
        return _failed(spec, cuda_only, f"{label}: --cuda-only kernels need a CUDA GPU to run; this machine has "
                                        "none (drop --cuda-only to check Triton kernels under the interpreter)",
                       device="cpu")
    opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, gpu, seed,
                    (not cuda_only) if compile_check is None else compile_check, _host_clock)
    return _Unit(spec, [(label, code)], opts).run(runner_job)[0]


def scrubbed(report: UnitReport | None) -> UnitReport | None:
    """The report with every text the candidate's process could have put in it (its errors, the
    reasons its cases failed) scrubbed of secrets, before it reaches a prompt, a file or a log."""
    from fastkernels.rules.secrets import scrub

    if report is None:
        return None
    report.error = scrub(report.error) if report.error else report.error
    for s in report.shapes:
        s.reason = scrub(s.reason) if s.reason else s.reason
    return report


def _failed(spec, cuda_only, error, *, device=None, kind="exception", seconds=0.0) -> UnitReport:
    return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                      device=device or ("cuda" if cuda_present() else "cpu"), cuda_only=cuda_only, passed=False,
                      kind=kind, error=error, seconds=seconds)


class _Options:
    def __init__(self, seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, gpu,
                 seed=None, compile_check=True, host_clock=False):
        self.seeds, self.timing, self.cuda_only, self.timeout = int(seeds), bool(timing), bool(cuda_only), timeout
        self.compile_baseline, self.require_kernel = bool(compile_baseline), bool(require_kernel)
        self.compile_cache, self.gpu, self.seed = bool(compile_cache), gpu, seed
        self.compile_check = bool(compile_check)
        self.host_clock = bool(host_clock)  # time without a GPU: only the timing protocol's tests


class _Unit:
    """One unit benchmark of one or more candidates of one operator: the candidates' child, the
    referee's children, and the figures joined into UnitReports."""

    def __init__(self, spec, codes: list[tuple[str, str]], opts: _Options, extra: dict | None = None) -> None:
        from fastkernels.gpu.devices import GpuPool

        self.spec, self.codes, self.opts, self.extra = spec, codes, opts, extra or {}
        self.env = GpuPool.job_env(opts.gpu)
        self.gpu = cuda_present()
        self.timed = (self.gpu or opts.host_clock) and opts.timing
        seed = opts.seed if opts.seed is not None else int.from_bytes(os.urandom(6), "little")
        self.seed = seed
        self.plan = Plan.draw(opts.seeds, seed)
        self.runner = None  # the candidates' JobResult

    def _report(self, **kw) -> UnitReport:
        kw.setdefault("device", "cuda" if self.gpu else "cpu")
        return UnitReport(op=self.spec.key, model_id=self.spec.model_id, class_name=self.spec.class_name,
                          cuda_only=self.opts.cuda_only, **kw)

    def _referee(self, items: list[dict], phase: str, time_baselines: bool = False):
        from fastkernels.judge.referee import RefereeJob, referee_job

        job = RefereeJob(spec=self.spec.to_dict(), level=self.spec.level, name=self.spec.name,
                         plan=self.plan.to_dict(), items=items, phase=phase, time_baselines=time_baselines,
                         compile_check=self.opts.compile_check, host_clock=self.opts.host_clock,
                         compile_baseline=self.opts.compile_baseline, compile_cache=self.opts.compile_cache)
        return run_job(referee_job, job.to_dict(), timeout=self.opts.timeout * max(1, len(items)),
                       label=f"{self.spec.key}: the referee", env=self.env, warm=GATE_PRELOAD)

    def run(self, target) -> list[UnitReport]:
        """The candidates' child and the referee's, joined; never raises for anything the candidates'
        process does (a file it rewrote, a result it forged): that candidate fails."""
        with tempfile.TemporaryDirectory(prefix="fk-xchg-") as xchg:
            items = []
            for i, (label, code) in enumerate(self.codes):
                folder = os.path.join(xchg, f"c{i}")
                os.makedirs(folder)
                items.append({"code": code, "label": label, "kernel_names": kernel_names(code), "dir": folder})
            job = RunnerJob(spec=self.spec.to_dict(), level=self.spec.level, name=self.spec.name,
                            plan=self.plan.to_dict(), items=items, cuda_only=self.opts.cuda_only,
                            require_kernel=self.opts.require_kernel, timing=self.opts.timing,
                            compile_check=self.opts.compile_check, host_clock=self.opts.host_clock,
                            wait_s=self.opts.timeout)
            payload = {**asdict(job), **self.extra}
            box: list = []
            label = self.codes[0][0] if len(self.codes) == 1 else f"{self.spec.key}: {len(self.codes)} candidates"
            # the referee's phases run while the candidates' child waits for their words: its limit has them
            timeout = self.opts.timeout * len(items) * (3 if self.timed else 1)
            stop = threading.Event()
            thread = threading.Thread(target=lambda: box.append(run_job(
                target, payload, timeout=timeout, label=label, env=self.env, warm=GATE_PRELOAD, cancel=stop)),
                daemon=True)
            thread.start()
            judged: list = [None] * len(items)
            timed: list = [None] * len(items)
            broken = ""
            try:
                if self.timed:
                    for i, item in enumerate(items):
                        judged[i], timed[i] = self._converse(item, thread)
                        if judged[i] is None:
                            break
            except OSError as exc:  # a word could not be written: the candidate's process made a mess of the folder
                broken = f"the exchange with the candidate's process failed ({type(exc).__name__}): it tampered with its folder"
                stop.set()  # it would wait for a word that cannot come
            except BaseException:
                stop.set()  # interrupted (Ctrl-C): the child goes with us
                raise
            thread.join()
            self.runner = box[0] if box else None
            try:
                reports = self._finish(items, judged, timed, broken)
            except Exception as exc:  # noqa: BLE001 - whatever the candidate's process wrote, the gate answers
                why = f"its results could not be read ({type(exc).__name__}: {str(exc)[:200]})"
                reports = [self._report(passed=False, error=f"{item['label']}: {why}") for item in items]
            return [scrubbed(r) for r in reports]

    def _converse(self, item: dict, thread) -> tuple:
        """One candidate's timed run: its outputs judged (and the baselines timed) by the referee, the
        word to time the shapes that passed, then the parent's pick of the timed outputs to check.
        Returns (the referee's JobResult or None when the runner ended first, {"shapes", "pick",
        "refill_seed"} for the check of the timed outputs)."""
        import random

        ready = hear(item["dir"], READY, self.opts.timeout, alive=thread.is_alive)
        if ready is None:
            return None, None
        cases = ready.get("cases") if isinstance(ready.get("cases"), list) else []
        ref = self._referee([{"dir": item["dir"], "label": item["label"], "cases": cases}], "outputs",
                            time_baselines=True)
        shapes = _passed_primary(ref, self.spec) if ref.ok else []
        say(item["dir"], GO, {"time": shapes})
        told = hear(item["dir"], TIMED, self.opts.timeout * 2, alive=thread.is_alive) or {}
        sets = told.get("sets") if isinstance(told.get("sets"), dict) else {}
        draw = random.SystemRandom()
        pick = {}
        for shape, timed_sets in sets.items():
            ids = sorted({i for i in timed_sets if isinstance(i, int) and 0 <= i < 4096}) if (
                shape in shapes and isinstance(timed_sets, list)) else []
            if ids:
                pick[shape] = sorted(draw.sample(ids, min(TIMED_CHECKS, len(ids))))
        check = {"shapes": list(pick), "pick": pick, "refill_seed": draw.randrange(1, 2**31 - 1)}
        say(item["dir"], PICK, {"pick": pick, "refill_seed": check["refill_seed"]})
        return ref, check

    def _finish(self, items, judged, timed, broken: str = "") -> list[UnitReport]:
        job = self.runner
        if job is None:
            return [self._report(passed=False, error=f"{item['label']}: the candidate's process did not start")
                    for item in items]
        if broken and not job.ok:
            return [self._report(passed=False, error=f"{item['label']}: {broken}") for item in items]
        if not job.ok:
            if len(items) > 1:
                return [None] * len(items)  # the caller reruns each alone
            return [self._report(passed=False, error=job.error + _tail_hint(job), kind=job.kind,
                                 seconds=job.seconds)]
        value = job.value if isinstance(job.value, dict) else {}
        results = value.get("results") if isinstance(value.get("results"), list) else []
        results = [r if isinstance(r, dict) else {"error": "the candidate's process reported nothing"}
                   for r in results[:len(items)]]
        if broken:
            results = [{**r, "error": f"{items[i]['label']}: {broken}"} for i, r in enumerate(results)]
        todo = [i for i in range(len(results)) if judged[i] is None and not results[i].get("error")]
        if todo:  # one referee for every candidate not judged yet (no GPU timing: it judged none so far)
            batch = self._referee([{"dir": items[i]["dir"], "label": items[i]["label"],
                                    "cases": results[i].get("cases")} for i in todo], "outputs")
            for n, i in enumerate(todo):
                judged[i] = (batch, n)
        reports: list = []
        for i, item in enumerate(items):
            if i >= len(results):
                reports.append(None)  # the batch ended early (a candidate replaced timing functions)
                continue
            res = results[i]
            report = self._report(device=str(res.get("device") or ("cuda" if self.gpu else "cpu"))[:100],
                                  phase_seconds=_numbers(res.get("phase_seconds")))
            if not isinstance(res.get("cases"), list):
                res["cases"] = []
            report.seconds = job.seconds / len(items)
            report.seed = self.seed
            if res.get("error"):
                report.error = str(res["error"])[:4000]
                reports.append(report)
                continue
            ref, n = judged[i] if isinstance(judged[i], tuple) else (judged[i], 0)
            if not ref.ok:
                report.error = f"{item['label']}: the referee failed ({ref.kind}): {ref.error}"
                reports.append(report)
                continue
            report.shapes = [ShapeResult(**s) for s in ref.value["items"][n]]
            report.passed = bool(report.shapes) and all(s.passed for s in report.shapes)
            if not self.timed and not self.gpu:
                report.timing_note = CPU_TIMING_NOTE
            elif not self.opts.timing:
                report.timing_note = "not timed (timing=False)"
            elif not report.passed:
                report.timing_note = "not timed: correctness failed"
            else:
                self._join_timing(report, item, res, ref.value, timed[i] or {})
            reports.append(report)
        return reports

    def _join_timing(self, report: UnitReport, item: dict, res: dict, base: dict, check: dict) -> None:
        timing = res.get("timing") if isinstance(res.get("timing"), dict) else {}
        timed = self._referee([{"dir": item["dir"], "label": item["label"], **check}], "timed")
        verdicts = timed.value["items"][0] if timed.ok else {}
        ceilings = base.get("ceilings")
        report.ceilings = ceilings
        primary = self.spec.dtypes[0]
        for r in report.shapes:
            if r.dtype != primary:
                continue
            b = (base.get("baselines") or {}).get(r.shape)
            t = timing.get(r.shape)
            if not b:
                r.reason += "; not timed (no baseline timing)"
                continue
            if not isinstance(t, dict):
                r.passed, r.reason = False, "not timed: the candidate's process did not time this shape"
                continue
            if t.get("error"):
                r.passed, r.reason = False, str(t["error"])[:500]
                continue
            why = verdicts.get(r.shape, "the referee did not check the timed outputs" if not timed.ok else None)
            if why is None:
                why = "the timed outputs were not checked"
            if why:
                r.passed, r.reason = False, f"while timed: {why}"
                continue
            _join_shape(r, t, b, ceilings)
        report.passed = all(s.passed for s in report.shapes) and bool(report.shapes)
        cached = " (torch.compile baseline times from this GPU's cache)" if any(s.compile_cached for s in report.shapes) else ""
        report.timing_note = (f"device time per call (interquartile mean of 200; GPU held while calls are enqueued, so "
                              f"launch cost does not show) and wall time per back-to-back call, {primary}, L2 flushed, "
                              f"distinct input sets (version counters bumped every call); the candidate timed in its "
                              f"own process, the baselines in a clean one{cached}; roofline vs the measured copy "
                              "bandwidth (memory-bound) or bf16 matmul (compute-bound)")
        if not self.gpu:
            report.timing_note = ("timed on the host clock, without a GPU: a test of the timing protocol (who times "
                                  "what, which outputs are checked); the figures mean nothing")


def _numbers(d) -> dict:
    if not isinstance(d, dict):
        return {}
    return {str(k)[:40]: float(v) for k, v in d.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _figure(t: dict, kind: str) -> float | None:
    try:
        v = float(t[kind]["candidate"]["iqm"])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _join_shape(r: ShapeResult, t: dict, b: dict, ceilings: dict | None) -> None:
    """One shape's timings: the candidate's (from its own process), the baselines' (from the
    referee), and the verdict on a figure the hardware cannot reach."""
    from fastkernels.measure.roofline import achieved
    from fastkernels.measure.timing import LAUNCH_BOUND_RATIO

    dev, wall = _figure(t, "device"), _figure(t, "wall")
    if dev is None or wall is None:
        r.passed, r.reason = False, "the candidate's timing figures are missing or not positive numbers"
        return
    r.candidate_ms, r.candidate_wall_ms = dev, wall
    r.baseline_eager_ms, r.baseline_eager_wall_ms = b.get("eager_ms"), b.get("eager_wall_ms")
    r.baseline_compile_ms, r.baseline_compile_wall_ms = b.get("compile_ms"), b.get("compile_wall_ms")
    r.compile_cached = bool(b.get("compile_cached"))
    r.timing_method = str(t.get("method", ""))[:20]
    r.timing = {"candidate": {k: t.get(k) for k in ("device", "wall", "method", "sets")},
                "baselines": b.get("timing")}
    if b.get("note"):
        r.reason += f"; {b['note']}"
    r.bound = b.get("bound") or r.bound
    roof = achieved(b.get("cost") or {}, dev, r.bound, ceilings)
    r.bytes_per_s, r.flops_per_s, r.roofline_fraction = roof["bytes_per_s"], roof["flops_per_s"], roof["roofline_fraction"]
    if r.roofline_fraction is not None and r.roofline_fraction > IMPOSSIBLE:
        what = "bf16 matmul peak" if r.bound == "compute" else "copy bandwidth"
        r.passed = False
        r.reason = (f"impossible timing: {dev * 1e3:.2f} us per call is {100 * r.roofline_fraction:.0f}% of this "
                    f"GPU's measured {what}; no kernel runs faster than the hardware: the timing was not of the "
                    "work (results replayed or cached, or the clock tampered with)")
        return
    if r.baseline_eager_ms:
        r.speedup_vs_eager = r.baseline_eager_ms / dev
    if r.baseline_compile_ms:
        r.speedup_vs_compile = r.baseline_compile_ms / dev
    if r.baseline_eager_wall_ms:
        r.speedup_wall_vs_eager = r.baseline_eager_wall_ms / wall
    if r.baseline_compile_wall_ms:
        r.speedup_wall_vs_compile = r.baseline_compile_wall_ms / wall
    eager_dev = r.baseline_eager_ms or 0.0
    r.launch_bound = wall > LAUNCH_BOUND_RATIO * dev or bool(
        eager_dev and (r.baseline_eager_wall_ms or 0) > LAUNCH_BOUND_RATIO * eager_dev)
    if r.launch_bound and r.speedup_wall_vs_eager and r.speedup_vs_eager:
        r.reason += (f"; launch-bound: issuing a call from Python takes longer than the GPU runs it "
                     f"(wall {1e3 * (r.baseline_eager_wall_ms or 0):.1f} us eager, {1e3 * wall:.1f} us candidate, "
                     f"per call), so an eager caller sees {r.speedup_wall_vs_eager:.2f}x where the GPU sees "
                     f"{r.speedup_vs_eager:.2f}x")


def _passed_primary(ref, spec) -> list[str]:
    primary = spec.dtypes[0]
    return [s["shape"] for s in ref.value["items"][0] if s["dtype"] == primary and s["passed"]]


def _small_spec(spec):
    """`spec` at the small workload (its tensor-parallel degree kept)."""
    import dataclasses

    from fastkernels.registry.tasks import Workload, build_spec

    small = dataclasses.replace(Workload.default(small=True), tp=spec.tp)
    return build_spec(spec.level, spec.name, spec.model_id, spec.tiny, small)


def run_unit_many(spec, codes: dict[str, str], *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
                  timeout: float = 600.0, compile_baseline: bool = True, require_kernel: bool = True,
                  compile_cache: bool = True, compile_check: bool | None = None) -> dict[str, UnitReport]:
    """run_unit for several candidates of one operator ({name: code}) in ONE candidates' child (one
    interpreter start, one CUDA context), for benchmarks that check many kernels of ours. Attribution
    stays exact: if the child dies (crash, timeout, CUDA error), every candidate it had not finished
    is re-run in a child of its own; a candidate that replaced timing functions ends the child's
    batch. Untrusted agent output should go through run_unit."""
    from fastkernels.judge.validate import static_check

    gpu = cuda_present()
    if not gpu and not spec.tiny:
        spec = _small_spec(spec)
    kw = dict(seeds=seeds, timing=timing, cuda_only=cuda_only, timeout=timeout, compile_baseline=compile_baseline,
              require_kernel=require_kernel, compile_cache=compile_cache, compile_check=compile_check)
    out: dict[str, UnitReport] = {}
    items = []
    for name, code in codes.items():
        if static_check(code, spec.class_name, cuda_only=cuda_only) is not None or (cuda_only and not gpu):
            out[name] = run_unit(spec, code, **kw)  # rejected before any child starts
            continue
        items.append((name, f"{spec.key} {spec.class_name} candidate ({name})", code))
    if len(items) == 1:
        out[items[0][0]] = run_unit(spec, items[0][2], **kw)
    elif items:
        opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, None,
                        compile_check=(not cuda_only) if compile_check is None else compile_check)
        reports = _Unit(spec, [(label, code) for _, label, code in items], opts).run(runner_job)
        for (name, _, code), report in zip(items, reports):
            out[name] = report if report is not None else run_unit(spec, code, **kw)
    return {name: out[name] for name in codes}



def run_gate(spec, code: str, *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
             timeout: float = 600.0, compile_baseline: bool = True, gpu: str | None = None,
             compile_check: bool | None = None):
    """The agent's gate - validate_kernel, then run_unit - with the validation and the candidate's
    run in ONE sandboxed child (one interpreter start and one `import torch` instead of two) and the
    verdict in the referee's. Returns (ValidationResult, UnitReport) with the verdicts and messages
    the two calls give; when validation fails the UnitReport says it was not run."""
    from fastkernels.judge import validate as v

    def not_run(why: str) -> UnitReport:
        return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name, cuda_only=cuda_only,
                          passed=False, kind="exception", error=f"{spec.key} {spec.class_name} candidate: not "
                                                                 f"unit-tested: {why}")

    bad = v.static_check(code, spec.class_name, cuda_only=cuda_only)
    if bad is not None:
        return bad, not_run("it did not validate")
    if cuda_only and not cuda_present():
        return v.ValidationResult(True), run_unit(spec, code, cuda_only=True)  # says it needs a GPU, no child
    run_spec = spec if cuda_present() or spec.tiny else _small_spec(spec)
    vpayload, vlabel = v.child_payload(code, spec.class_name, spec)
    label = f"{run_spec.key} {run_spec.class_name} candidate"
    if v.builds_cuda(code, cuda_only):
        timeout = max(timeout, v.CUDA_BUILD_TIMEOUT)
    flag_dir = tempfile.mkdtemp(prefix="fk-gate-")
    flag = os.path.join(flag_dir, "validated.json")
    try:
        opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, True, True, gpu,
                        compile_check=(not cuda_only) if compile_check is None else compile_check)
        unit = _Unit(run_spec, [(label, code)], opts, extra={"validate": vpayload, "validated_flag": flag})
        report = unit.run(_gate_job)[0]
        job = unit.runner
        if report is None:
            report = _failed(run_spec, cuda_only, f"{label}: the candidate's process reported no result")
        validated = read_dict(flag)  # the validation stage's verdict (None: absent or garbled)
    finally:
        shutil.rmtree(flag_dir, ignore_errors=True)
    if validated is None:  # it died before validation finished: validate_kernel's own verdict on that
        if job is None:
            failed = v.ValidationResult(False, error=f"{vlabel}: the candidate's process did not start", stage="import")
        elif job.ok:
            value = job.value if isinstance(job.value, dict) else {}
            given = value.get("validation") if isinstance(value.get("validation"), dict) else None
            failed = v.result_of(given or {"error": "no validation result"}, vlabel, job.seconds)
        else:
            failed = v.result_from_failed_job(job, vpayload, vlabel)
        return failed, not_run("it did not validate")
    seconds = validated.get("seconds", 0.0)
    verdict = v.result_of(validated, vlabel, seconds if isinstance(seconds, (int, float)) else 0.0)
    if not verdict.ok:
        return verdict, not_run("it did not validate")
    report.seconds = job.seconds if job is not None else 0.0
    return verdict, report



def _tail_hint(job) -> str:
    lines = [ln for ln in job.stderr_tail.splitlines() if "candidate.py" in ln and ln.strip().startswith("File ")]
    if not lines:
        return ""
    m = re.search(r"line (\d+)", lines[-1])
    return f" (last candidate frame: line {m.group(1)} of the kernel file)" if m else ""



def _gate_job(payload: dict) -> dict:
    """Sandbox side of run_gate: validate_kernel's checks, then the candidate's run, in this one child."""
    from fastkernels.gpu.cuda_build import cached_builds
    from fastkernels.judge.validate import _validate_in_child

    t0 = time.perf_counter()
    with cached_builds():
        value = _validate_in_child(payload["validate"])
    value = {**value, "seconds": time.perf_counter() - t0}
    with open(payload["validated_flag"], "w") as fh:
        json.dump(value, fh)
    if value.get("error"):
        return {"validation": value}
    return {"validation": value, "results": runner_job(payload)["results"]}
