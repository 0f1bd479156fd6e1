"""The referee: the unit benchmark's verdict, computed in a process that never imported the candidate.

The candidate's child (fastkernels.measure.runner) writes what the candidate returned for inputs the
parent chose; this child, started clean, rebuilds the same inputs and weights from the parent's
seeds, runs the baseline in the case's dtype and in fp32, and compares with the one rule
(fastkernels.rules.tolerance, through fastkernels.measure.unit._compare). It also checks that the
inputs came back unchanged, times the baselines (eager and torch.compile, on the same input sets the
candidate is timed on), and is the only writer of the shared caches (the compiled baseline's times,
the device ceilings). A second call checks the outputs the candidate returned while it was timed.

Nothing the candidate's process reports can make a case pass: its reported failures are taken as
they are (they only hurt it), a missing or unreadable output file fails the case, and its timings are
bounded by the hardware in fastkernels.judge.gate (a figure above the measured ceiling is rejected).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field

from fastkernels.measure.runner import (
    Plan,
    case_file,
    case_inputs,
    flatten,
    has_float_input,
    leaves,
    pool_size,
    spec_from_dict,
    stopwatch_counts,
    timed_file,
    timing_pool,
)
from fastkernels.measure.unit import (
    ShapeResult,
    _compare,
    _Reject,
    _structure,
    _to_fp32,
)
from fastkernels.rules.tolerance import TOLERANCES


@dataclass(frozen=True)
class RefereeJob:
    """`items`: [{"dir": the candidate's exchange folder, "label", "cases": the runner's case
    list}]; phase "outputs" judges the correctness samples (and, with time_baselines, times the
    baselines of the shapes that passed); phase "timed" checks the outputs of the timed calls
    (`items[i]["shapes"]`: the shapes the candidate was timed on)."""

    spec: dict
    level: int
    name: str
    plan: dict
    items: list
    phase: str = "outputs"
    compile_check: bool = True
    time_baselines: bool = False
    host_clock: bool = False  # time on a machine without a GPU (the protocol's tests; figures meaningless)
    compile_baseline: bool = True
    compile_cache: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RefereeJob":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class BaselineTimes:
    """One shape's baseline timings (device and wall per call, ms) and what the roofline needs."""

    eager_ms: float | None = None
    eager_wall_ms: float | None = None
    compile_ms: float | None = None
    compile_wall_ms: float | None = None
    compile_cached: bool = False
    note: str = ""
    cost: dict = field(default_factory=dict)
    bound: str = "memory"
    timing: dict | None = None


def _load(path: str):
    """The candidate's output file, loaded without running anything it could have put there."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a corrupt file is the candidate's fault
        raise _Reject(f"its output file could not be read ({type(exc).__name__}): outputs must be tensors") from None
    keys = ("paths", "tensors", "types", "strides")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys) or \
            len({len(data[k]) for k in keys}) != 1 or not isinstance(data.get("inputs"), (list, type(None))):
        raise _Reject("its output file is not what the harness wrote (the candidate's process rewrote it)")
    return data


def _as_output(data, device):
    """The candidate's outputs from a loaded file, on `device` in the layout it returned them."""
    import torch

    outs = []
    for t, typ, stride in zip(data["tensors"], data["types"], data["strides"]):
        if not isinstance(t, torch.Tensor):
            outs.append(_Opaque(typ))
            continue
        try:
            placed = torch.empty_strided(tuple(t.shape), tuple(int(x) for x in stride), dtype=t.dtype, device=device)
            placed.copy_(t)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise _Reject(f"an output could not be laid out as it was returned ({type(exc).__name__})") from None
        outs.append(placed)
    return outs


class _Opaque:
    """A non-tensor output, known only by its type's name."""

    def __init__(self, name: str) -> None:
        self.name = name


def routed(spec) -> bool:
    """A block of a mixture-of-experts model (its outputs depend on discrete expert choices)."""
    config = spec.config()
    return spec.level >= 2 and bool(getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0))


def _check_outputs(label: str, data, ref, expect, device, dtype, is_routed: bool = False) -> tuple[float, float, bool]:
    """Compare one sample's loaded outputs with the reference. Returns (max abs, max rel, counted)."""
    import torch

    flat_ref, flat_exp = flatten(ref), flatten(expect)
    paths = [p for p, _ in flat_exp]
    if data is None:
        raise _Reject(f"no output was written for this sample{label}: the candidate's process ended or "
                      "skipped it")
    if list(data["paths"]) != paths:
        got = data["types"][0] if len(data["types"]) == 1 and data["paths"] == ["out"] else None
        shown = f"a {got}" if got and got != "Tensor" else f"{len(data['paths'])} output(s) {data['paths'][:4]}"
        raise _Reject(f"returns {shown}, the baseline returns {_structure(expect)}{label}")
    outs = _as_output(data, device)
    worst_abs = worst_rel = 0.0
    counted = False
    for (path, r), (_, e), c in zip(flat_ref, flat_exp, outs):
        if not isinstance(e, torch.Tensor):
            continue
        if isinstance(c, _Opaque):
            raise _Reject(f"{path} is a {c.name}, the baseline returns a tensor{label}")
        try:
            a, rel, constant = _compare(path, c, r, e, TOLERANCES[dtype], routed=is_routed)
        except _Reject as rej:
            raise _Reject(f"{rej}{label}") from None
        if not constant:
            counted = True
            worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, rel)
    return worst_abs, worst_rel, counted


def _check_inputs(data, inputs, inplace) -> None:
    import torch

    after = data.get("inputs") or []
    for k, (i, x) in enumerate(leaves(inputs)):
        if i in inplace:
            continue
        got = after[k] if k < len(after) else None
        if not isinstance(got, torch.Tensor) or got.shape != x.shape or not torch.equal(got.to(x.device), x):
            raise _Reject(f"input #{i} was modified in place; the operator must leave its inputs unchanged")


NOTES = {"small": " [inputs scaled by 2**-9, where the epsilon matters: check eps]",
         "compiled": " [the module under torch.compile(fullgraph=True)]",
         "graph": " [the forward captured in a CUDA graph, replayed on new values]",
         "refill": " [same input tensors as the previous call, refilled with new values: does the kernel "
                   "cache results?]"}


def _judge_case(spec, shape, dtype, device, plan: Plan, folder: str, compile_check: bool,
                late: str | None = None) -> ShapeResult:
    """One case's samples. `late`: the candidate's process found its compiled or CUDA-graph step
    failing: the verdict once the samples before it pass (and those steps are not judged)."""
    import torch

    from fastkernels.registry.tasks import build_baseline

    dims = spec.shapes[shape]
    result = ShapeResult(shape=shape, dtype=dtype, dims=dims, bound=dims.get("bound", spec.bound))
    inplace = set(getattr(spec.task(), "INPLACE_INPUTS", ()))
    baseline = build_baseline(spec, shape, dtype, device, seed=plan.case_weight_seed(shape, dtype))
    reference = copy.deepcopy(baseline).float()
    counted = skipped = 0
    worst_abs = worst_rel = 0.0
    primary = dtype == spec.dtypes[0]
    steps = plan.steps(compiled=compile_check and primary, graph=compile_check and primary and device.type == "cuda")
    for k, (what, seed) in enumerate(steps):
        if late and what in ("compiled", "graph"):
            raise _Reject(late)
        inputs = case_inputs(spec, shape, dtype, device, what, seed)
        if what == "small" and not has_float_input(inputs):
            continue
        data = _load(case_file(folder, shape, dtype, k))
        with torch.no_grad():
            ref = reference(*_to_fp32(inputs))
            expect = baseline(*inputs)
        a, rel, ok = _check_outputs(NOTES.get(what, ""), data, ref, expect, device, dtype, routed(spec))
        _check_inputs(data, inputs, inplace)
        counted += ok
        skipped += not ok
        if ok:
            worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, rel)
    if counted == 0:
        raise _Reject("the reference output is near-constant on every input drawn: this shape cannot tell "
                      "kernels apart (a task bug; report it)")
    result.passed = True
    result.samples = counted
    result.max_abs_err, result.max_rel_err = worst_abs, worst_rel
    result.reason = f"ok: {counted} inputs within {dtype} tolerance" + (
        f" ({skipped} with a near-constant reference not counted)" if skipped else "")
    return result


def _judge_outputs(spec, device, plan: Plan, item: dict, compile_check: bool) -> list[ShapeResult]:
    by_case = {(c["shape"], c["dtype"]): c for c in item.get("cases") or []}
    results = []
    for shape in spec.shapes:
        for dtype in spec.dtypes:
            case = by_case.get((shape, dtype)) or {}
            if case.get("reject"):
                results.append(ShapeResult(shape=shape, dtype=dtype, dims=spec.shapes[shape], passed=False,
                                           reason=str(case["reject"])[:2000], bound=spec.bound_for(shape)))
                continue
            try:
                late = str(case["late"])[:2000] if case.get("late") else None
                results.append(_judge_case(spec, shape, dtype, device, plan, item["dir"], compile_check, late))
            except _Reject as rej:
                results.append(ShapeResult(shape=shape, dtype=dtype, dims=spec.shapes[shape], passed=False,
                                           reason=str(rej), bound=spec.bound_for(shape)))
    return results


def _judge_timed(spec, device, plan: Plan, item: dict) -> dict:
    """The outputs the candidate returned while it was timed, against the reference for the input set
    each came from (`item["pick"][shape]`: the sets the parent picked after timing), and the call
    on the first set refilled with the parent's `refill_seed` after timing. {shape: reason or ""}."""
    import torch

    from fastkernels.registry.tasks import build_baseline

    dtype = spec.dtypes[0]
    out = {}
    for shape in item.get("shapes", []):
        baseline = build_baseline(spec, shape, dtype, device, seed=plan.case_weight_seed(shape, dtype))
        reference = copy.deepcopy(baseline).float()
        first = case_inputs(spec, shape, dtype, device, "fresh", plan.timing_base)
        picked = [i for i in (item.get("pick") or {}).get(shape, []) if 0 <= i < pool_size(first)]
        checks = [(i, plan.timing_base + i) for i in picked]
        checks.append((-1, int(item.get("refill_seed", 0))))  # the first set refilled in place after timing
        try:
            for i, seed in checks:
                inputs = case_inputs(spec, shape, dtype, device, "fresh", seed)
                with torch.no_grad():
                    ref = reference(*_to_fp32(inputs))
                    expect = baseline(*inputs)
                label = (" [the first timing input refilled in place with new values after timing: the kernel "
                         "caches results across calls]" if i < 0 else
                         f" [the output of a timed call, input set {i}: the kernel returns something else when timed]")
                _check_outputs(label, _load(timed_file(item["dir"], shape, i)), ref, expect, device, dtype,
                               routed(spec))
            out[shape] = ""
        except _Reject as rej:
            out[shape] = str(rej)
    return out


# ---- the baselines' timings (clean process only) ------------------------------------------

def _compile_key(spec, shape, dtype) -> str:
    """What a compiled baseline's time depends on: GPU, torch, the baseline's code, weights' shapes."""
    import hashlib

    import torch

    code = hashlib.sha1(spec.source_code.encode()).hexdigest()[:12]
    dims = json.dumps({"init": spec.init_args_for(shape), "shape": spec.shapes[shape]}, sort_keys=True)
    # "device-v3": fresh-input timing (times measured by earlier methods are not reused)
    return f"device-v3|{torch.cuda.get_device_name()}|torch {torch.__version__}|{spec.key}|{code}|{dims}|{dtype}"


def compile_cache_path():
    from fastkernels.measure.roofline import cache_path

    return cache_path().parent / "compiled_baseline_ms.json"


def _compile_cache() -> dict:
    try:
        return json.loads(compile_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _compile_cache_put(key: str, ms: float, wall_ms: float | None) -> None:
    """torch.compile of a baseline takes seconds to a minute per shape and does not depend on the
    candidate: measured once per GPU, torch version and baseline, then read back."""
    data = _compile_cache()
    data[key] = {"ms": ms, "wall_ms": wall_ms}  # device time, and wall time per back-to-back call
    path = compile_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _time_baselines(spec, shape, dtype, device, plan: Plan, job: RefereeJob) -> BaselineTimes:
    import torch

    from fastkernels.measure.timing import compare
    from fastkernels.registry.tasks import build_baseline, dtype_of

    times = BaselineTimes(bound=spec.bound_for(shape))
    times.cost = spec.task().cost(spec.config(), spec.shapes[shape], dtype_of(dtype))
    baseline = build_baseline(spec, shape, dtype, device, seed=plan.case_weight_seed(shape, dtype))
    sets = timing_pool(spec, shape, dtype, device, plan)
    subjects = {"eager": baseline}
    key = _compile_key(spec, shape, dtype) if device.type == "cuda" else None
    with torch.no_grad():
        if job.compile_baseline and key is not None:
            cached = _compile_cache().get(key) if job.compile_cache else None
            if isinstance(cached, dict) and cached.get("wall_ms") is not None:
                times.compile_ms, times.compile_wall_ms, times.compile_cached = cached["ms"], cached["wall_ms"], True
            else:
                try:
                    compiled = torch.compile(copy.deepcopy(baseline), dynamic=False)
                    for args in sets[:2]:
                        compiled(*args)
                    subjects["compile"] = compiled
                except Exception as exc:  # noqa: BLE001 - a compile failure is a missing number, not a verdict
                    times.note = f"torch.compile baseline failed: {type(exc).__name__}"
        cmp = compare(subjects, sets, **stopwatch_counts(device))
    times.timing = cmp.to_dict()
    times.eager_ms, times.eager_wall_ms = cmp.device["eager"].iqm, cmp.wall["eager"].iqm
    if "compile" in cmp.device:
        times.compile_ms, times.compile_wall_ms = cmp.device["compile"].iqm, cmp.wall["compile"].iqm
        _compile_cache_put(key, times.compile_ms, times.compile_wall_ms)
    return times


def referee_job(payload: dict) -> dict:
    """Sandbox side of the referee (a clean child: it imports no candidate)."""
    import torch

    t0 = time.perf_counter()
    job = RefereeJob.from_dict(payload)
    spec = spec_from_dict(job.level, job.name, job.spec)
    plan = Plan(**job.plan)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if job.phase == "timed":
        return {"items": [_judge_timed(spec, device, plan, item) for item in job.items]}
    items = [[asdict(r) for r in _judge_outputs(spec, device, plan, item, job.compile_check)] for item in job.items]
    out: dict = {"items": items, "seconds": time.perf_counter() - t0}
    if job.time_baselines and (device.type == "cuda" or job.host_clock):
        from fastkernels.measure.roofline import device_ceilings

        primary = spec.dtypes[0]
        passed = [s for s in spec.shapes
                  if any(r["shape"] == s and r["dtype"] == primary and r["passed"] for rs in items for r in rs)]
        out["ceilings"] = device_ceilings() if device.type == "cuda" else None
        out["baselines"] = {s: asdict(_time_baselines(spec, s, primary, device, plan, job)) for s in passed}
    return out
