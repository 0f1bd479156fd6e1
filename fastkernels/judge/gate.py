"""The gate: is a candidate accepted? `run_gate(spec, code)` validates it (static checks, then
import, class and `__init__` in a child: fastkernels.judge.validate) and unit-tests it
(fastkernels.measure.unit) in ONE sandboxed child; `run_unit` and `run_unit_many` run the unit
benchmark alone. Every call returns typed results and never raises for anything the candidate does.
The parent side lives here; what runs inside the child is fastkernels.measure.unit's.
"""

from __future__ import annotations

import json
import re
import time

from fastkernels.measure.unit import GATE_PRELOAD, UnitReport, _unit_job, _unit_many_job, measure_candidate
from fastkernels.sandbox import cuda_present, run_job


def kernel_names(code: str) -> list[str]:
    """Names of the kernels a candidate defines: @triton.jit functions and CUDA __global__ functions."""
    import ast

    names = []
    try:
        tree = ast.parse(code)
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
             compile_cache: bool = True, gpu: str | None = None) -> UnitReport:
    """Unit-test and time one candidate (the source of a file defining `spec.class_name`) for one
    OperatorSpec. Runs in a sandboxed child; never raises for anything the candidate does.
    On a machine without a GPU the shapes are the small workload's, and nothing is timed.
    require_kernel=False accepts a candidate that runs no kernel of its own (only to time the
    baseline against itself: the stopwatch's fairness check). compile_cache=False times the compiled
    baseline now, interleaved with the others, instead of reading this GPU's earlier figure.
    gpu: the id of the GPU to run on (the job's CUDA_VISIBLE_DEVICES, as fastkernels.gpu.devices
    hands them out); None leaves the environment's choice."""
    from fastkernels.gpu.devices import GpuPool
    from fastkernels.judge.validate import static_check

    env = GpuPool.job_env(gpu)
    gpu = cuda_present()
    if not gpu and not spec.tiny:
        # The Triton interpreter gets through the small workload in seconds, the full one never.
        spec = _small_spec(spec)
    label = f"{spec.key} {spec.class_name} candidate"
    bad = static_check(code, spec.class_name, cuda_only=cuda_only)
    if bad is not None:
        return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                          device="cuda" if gpu else "cpu", cuda_only=cuda_only, passed=False,
                          kind="exception", error=f"{label}: {bad.error}")
    if cuda_only and not gpu:
        return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name, device="cpu",
                          cuda_only=True, passed=False, kind="exception",
                          error=f"{label}: --cuda-only kernels need a CUDA GPU to run; this machine has none "
                                "(drop --cuda-only to check Triton kernels under the interpreter)")
    payload = {
        "spec": spec.to_dict(), "level": spec.level, "name": spec.name, "code": code, "seeds": int(seeds),
        "timing": bool(timing), "cuda_only": bool(cuda_only), "kernel_names": kernel_names(code),
        "compile_baseline": bool(compile_baseline), "label": label, "require_kernel": bool(require_kernel),
        "compile_cache": bool(compile_cache),
    }
    job = run_job(_unit_job, payload, timeout=timeout, label=label, env=env,
                  warm=GATE_PRELOAD)
    if job.ok:
        report = UnitReport.from_dict(job.value)
        report.seconds = job.seconds
        return report
    return UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                      device="cuda" if gpu else "cpu", cuda_only=cuda_only, passed=False,
                      error=job.error + _tail_hint(job), kind=job.kind, seconds=job.seconds)



def _small_spec(spec):
    """`spec` at the small workload (its tensor-parallel degree kept)."""
    import dataclasses

    from fastkernels.registry.tasks import Workload, build_spec

    small = dataclasses.replace(Workload.default(small=True), tp=spec.tp)
    return build_spec(spec.level, spec.name, spec.model_id, spec.tiny, small)



def run_unit_many(spec, codes: dict[str, str], *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
                  timeout: float = 600.0, compile_baseline: bool = True, require_kernel: bool = True,
                  compile_cache: bool = True) -> dict[str, UnitReport]:
    """run_unit for several candidates of one operator ({name: code}) in ONE sandboxed child (one
    interpreter start, one CUDA context, the compiled baseline shared), for benchmarks that check
    many kernels of ours. Attribution stays exact: if the child dies (crash, timeout, CUDA error),
    every candidate it had not finished is re-run in a child of its own; a candidate that replaced
    timing functions ends the child's batch. Untrusted agent output should go through run_unit."""
    from fastkernels.judge.validate import static_check

    gpu = cuda_present()
    if not gpu and not spec.tiny:
        spec = _small_spec(spec)
    kw = dict(seeds=seeds, timing=timing, cuda_only=cuda_only, timeout=timeout, compile_baseline=compile_baseline,
              require_kernel=require_kernel, compile_cache=compile_cache)
    out: dict[str, UnitReport] = {}
    items = []
    for name, code in codes.items():
        label = f"{spec.key} {spec.class_name} candidate ({name})"
        if static_check(code, spec.class_name, cuda_only=cuda_only) is not None or (cuda_only and not gpu):
            out[name] = run_unit(spec, code, **kw)  # rejected before any child starts
            continue
        items.append((name, {"code": code, "label": label, "kernel_names": kernel_names(code)}))
    while items:
        if len(items) == 1:
            name, _ = items.pop()
            out[name] = run_unit(spec, codes[name], **kw)
            break
        payload = {"spec": spec.to_dict(), "level": spec.level, "name": spec.name, "seeds": int(seeds),
                   "timing": bool(timing), "cuda_only": bool(cuda_only), "compile_baseline": bool(compile_baseline),
                   "require_kernel": bool(require_kernel), "compile_cache": bool(compile_cache),
                   "items": [item for _, item in items]}
        job = run_job(_unit_many_job, payload, timeout=timeout * len(items),
                      label=f"{spec.key}: {len(items)} candidates")
        if not job.ok:  # one of them killed the child: each of the rest alone
            for name, _ in items:
                out[name] = run_unit(spec, codes[name], **kw)
            break
        done = job.value["reports"]
        for (name, _), data in zip(items, done):
            report = UnitReport.from_dict(data)
            report.seconds = job.seconds / max(len(done), 1)
            out[name] = report
        items = items[len(done):]
    return {name: out[name] for name in codes}



def run_gate(spec, code: str, *, seeds: int = 3, timing: bool = True, cuda_only: bool = False,
             timeout: float = 600.0, compile_baseline: bool = True, gpu: str | None = None):
    """The agent's gate - validate_kernel, then run_unit - in ONE sandboxed child: one interpreter
    start and one `import torch` instead of two (each is most of a warm gate's wall time).
    Returns (ValidationResult, UnitReport) with the verdicts and messages the two calls give; when
    validation fails the UnitReport says it was not run."""
    import tempfile
    from pathlib import Path

    from fastkernels.gpu.devices import GpuPool
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
    with tempfile.TemporaryDirectory(prefix="fk-gate-") as tmp:
        flag = Path(tmp) / "validated.json"
        payload = {
            "spec": run_spec.to_dict(), "level": run_spec.level, "name": run_spec.name, "code": code,
            "seeds": int(seeds), "timing": bool(timing), "cuda_only": bool(cuda_only),
            "kernel_names": kernel_names(code), "compile_baseline": bool(compile_baseline), "label": label,
            "require_kernel": True, "compile_cache": True, "validate": vpayload, "validated_flag": str(flag),
        }
        if v.builds_cuda(code, cuda_only):
            timeout = max(timeout, v.CUDA_BUILD_TIMEOUT)
        job = run_job(_gate_job, payload, timeout=timeout, label=label,
                      env=GpuPool.job_env(gpu), warm=GATE_PRELOAD)
        validated = json.loads(flag.read_text()) if flag.is_file() else None
    if validated is None:  # it died before validation finished: validate_kernel's own verdict on that
        if job.ok:
            failed = v.result_of(job.value.get("validation") or {"error": "no validation result"}, vlabel, job.seconds)
        else:
            failed = v.result_from_failed_job(job, vpayload, vlabel)
        return failed, not_run("it did not validate")
    verdict = v.result_of(validated, vlabel, validated.get("seconds", 0.0))
    if not verdict.ok:
        return verdict, not_run("it did not validate")
    if job.ok:
        report = UnitReport.from_dict(job.value["unit"])
        report.seconds = job.seconds
        return verdict, report
    return verdict, UnitReport(op=run_spec.key, model_id=run_spec.model_id, class_name=run_spec.class_name,
                               device="cuda" if cuda_present() else "cpu", cuda_only=cuda_only, passed=False,
                               error=job.error + _tail_hint(job), kind=job.kind, seconds=job.seconds)



def _tail_hint(job) -> str:
    lines = [ln for ln in job.stderr_tail.splitlines() if "candidate.py" in ln and ln.strip().startswith("File ")]
    if not lines:
        return ""
    m = re.search(r"line (\d+)", lines[-1])
    return f" (last candidate frame: line {m.group(1)} of the kernel file)" if m else ""



def _gate_job(payload: dict) -> dict:
    """Sandbox side of run_gate: validate_kernel's checks, then the unit test, in this one child."""
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
    return {"validation": value, "unit": measure_candidate(payload, "candidate.py", "fk_candidate_unit")}
