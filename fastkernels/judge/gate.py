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

from fastkernels.measure.runner import GO, READY, Plan, RunnerJob, runner_job
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
             compile_cache: bool = True, gpu: str | None = None, seed: int | None = None) -> UnitReport:
    """Unit-test and time one candidate (the source of a file defining `spec.class_name`) for one
    OperatorSpec, the candidate in a sandboxed child and the verdict in another (see above); never
    raises for anything the candidate does. On a machine without a GPU the shapes are the small
    workload's, and nothing is timed. require_kernel=False accepts a candidate that runs no kernel
    of its own (only to time the baseline against itself: the stopwatch's fairness check).
    compile_cache=False times the compiled baseline now instead of reading this GPU's earlier
    figure. gpu: the id of the GPU to run on (the job's CUDA_VISIBLE_DEVICES, as
    fastkernels.gpu.devices hands them out); None leaves the environment's choice. seed: the plan's
    seed (None: drawn at random; the report's `seed` says which, to reproduce a run)."""
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
    opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, gpu, seed)
    return _Unit(spec, [(label, code)], opts).run(runner_job)[0]


def _failed(spec, cuda_only, error, *, device=None, kind="exception", seconds=0.0) -> UnitReport:
    return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                      device=device or ("cuda" if cuda_present() else "cpu"), cuda_only=cuda_only, passed=False,
                      kind=kind, error=error, seconds=seconds)


class _Options:
    def __init__(self, seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, gpu,
                 seed=None):
        self.seeds, self.timing, self.cuda_only, self.timeout = int(seeds), bool(timing), bool(cuda_only), timeout
        self.compile_baseline, self.require_kernel = bool(compile_baseline), bool(require_kernel)
        self.compile_cache, self.gpu, self.seed = bool(compile_cache), gpu, seed


class _Unit:
    """One unit benchmark of one or more candidates of one operator: the candidates' child, the
    referee's children, and the figures joined into UnitReports."""

    def __init__(self, spec, codes: list[tuple[str, str]], opts: _Options, extra: dict | None = None) -> None:
        from fastkernels.gpu.devices import GpuPool

        self.spec, self.codes, self.opts, self.extra = spec, codes, opts, extra or {}
        self.env = GpuPool.job_env(opts.gpu)
        self.gpu = cuda_present()
        self.timed = self.gpu and opts.timing
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
                         compile_baseline=self.opts.compile_baseline, compile_cache=self.opts.compile_cache)
        return run_job(referee_job, job.to_dict(), timeout=self.opts.timeout * max(1, len(items)),
                       label=f"{self.spec.key}: the referee", env=self.env, warm=GATE_PRELOAD)

    def run(self, target) -> list[UnitReport]:
        with tempfile.TemporaryDirectory(prefix="fk-xchg-") as xchg:
            items = []
            for i, (label, code) in enumerate(self.codes):
                folder = os.path.join(xchg, f"c{i}")
                os.makedirs(folder)
                items.append({"code": code, "label": label, "kernel_names": kernel_names(code), "dir": folder})
            job = RunnerJob(spec=self.spec.to_dict(), level=self.spec.level, name=self.spec.name,
                            plan=self.plan.to_dict(), items=items, cuda_only=self.opts.cuda_only,
                            require_kernel=self.opts.require_kernel, timing=self.opts.timing)
            payload = {**asdict(job), **self.extra}
            box: list = []
            label = self.codes[0][0] if len(self.codes) == 1 else f"{self.spec.key}: {len(self.codes)} candidates"
            timeout = self.opts.timeout * len(items) * (2 if self.timed else 1)
            thread = threading.Thread(target=lambda: box.append(run_job(
                target, payload, timeout=timeout, label=label, env=self.env, warm=GATE_PRELOAD)), daemon=True)
            thread.start()
            judged: list = [None] * len(items)
            baselines: list = [None] * len(items)
            if self.timed:
                for i, item in enumerate(items):
                    cases = _wait_ready(item["dir"], thread)
                    if cases is None:
                        break
                    ref = self._referee([{"dir": item["dir"], "label": item["label"], "cases": cases}], "outputs",
                                        time_baselines=True)
                    judged[i] = ref
                    shapes = _passed_primary(ref, self.spec) if ref.ok else []
                    baselines[i] = ref.value if ref.ok else None
                    _write_json(os.path.join(item["dir"], GO), {"time": shapes})
            thread.join()
            self.runner = box[0]
            return self._finish(items, judged, baselines)

    def _finish(self, items, judged, baselines) -> list[UnitReport]:
        job = self.runner
        if not job.ok:
            if len(items) > 1:
                return [None] * len(items)  # the caller reruns each alone
            return [self._report(passed=False, error=job.error + _tail_hint(job), kind=job.kind,
                                 seconds=job.seconds)]
        results = (job.value or {}).get("results") or []
        results = [r if isinstance(r, dict) else {"error": "the candidate's process reported nothing"}
                   for r in results[:len(items)]]
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
            if not self.gpu:
                report.timing_note = CPU_TIMING_NOTE
            elif not self.opts.timing:
                report.timing_note = "not timed (timing=False)"
            elif not report.passed:
                report.timing_note = "not timed: correctness failed"
            else:
                self._join_timing(report, item, res, baselines[i] or {})
            reports.append(report)
        return reports

    def _join_timing(self, report: UnitReport, item: dict, res: dict, base: dict) -> None:
        timing = res.get("timing") if isinstance(res.get("timing"), dict) else {}
        timed = self._referee([{"dir": item["dir"], "label": item["label"], "shapes": list(timing)}], "timed")
        verdicts = timed.value["items"][0] if timed.ok else {}
        ceilings = base.get("ceilings")
        report.ceilings = ceilings
        primary = self.spec.dtypes[0]
        for r in report.shapes:
            if r.dtype != primary:
                continue
            b = (base.get("baselines") or {}).get(r.shape)
            t = timing.get(r.shape)
            if not b or not isinstance(t, dict):
                r.reason += "; not timed"
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


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _wait_ready(folder: str, thread: threading.Thread) -> list | None:
    """The runner's case list once it has written a candidate's outputs (None: it ended first)."""
    path = os.path.join(folder, READY)
    while not os.path.exists(path):
        if not thread.is_alive():
            return None
        time.sleep(0.02)
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data.get("cases") if isinstance(data, dict) and isinstance(data.get("cases"), list) else []
    except (OSError, ValueError):
        return []


def _small_spec(spec):
    """`spec` at the small workload (its tensor-parallel degree kept)."""
    import dataclasses

    from fastkernels.registry.tasks import Workload, build_spec

    small = dataclasses.replace(Workload.default(small=True), tp=spec.tp)
    return build_spec(spec.level, spec.name, spec.model_id, spec.tiny, small)


def run_unit_many(spec, codes: dict[str, str], *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
                  timeout: float = 600.0, compile_baseline: bool = True, require_kernel: bool = True,
                  compile_cache: bool = True) -> dict[str, UnitReport]:
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
              require_kernel=require_kernel, compile_cache=compile_cache)
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
        opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, require_kernel, compile_cache, None)
        reports = _Unit(spec, [(label, code) for _, label, code in items], opts).run(runner_job)
        for (name, _, code), report in zip(items, reports):
            out[name] = report if report is not None else run_unit(spec, code, **kw)
    return {name: out[name] for name in codes}



def run_gate(spec, code: str, *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
             timeout: float = 600.0, compile_baseline: bool = True, gpu: str | None = None):
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
        opts = _Options(seeds, timing, cuda_only, timeout, compile_baseline, True, True, gpu)
        unit = _Unit(run_spec, [(label, code)], opts, extra={"validate": vpayload, "validated_flag": flag})
        report = unit.run(_gate_job)[0]
        job = unit.runner
        if report is None:
            report = _failed(run_spec, cuda_only, f"{label}: the candidate's process reported no result")
        validated = json.loads(open(flag).read()) if os.path.isfile(flag) else None
    finally:
        shutil.rmtree(flag_dir, ignore_errors=True)
    if validated is None:  # it died before validation finished: validate_kernel's own verdict on that
        if job.ok:
            failed = v.result_of((job.value or {}).get("validation") or {"error": "no validation result"}, vlabel,
                                 job.seconds)
        else:
            failed = v.result_from_failed_job(job, vpayload, vlabel)
        return failed, not_run("it did not validate")
    verdict = v.result_of(validated, vlabel, validated.get("seconds", 0.0))
    if not verdict.ok:
        return verdict, not_run("it did not validate")
    report.seconds = job.seconds
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
