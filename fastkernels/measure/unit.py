"""Per-operator unit benchmark: is the candidate right, and how fast is it?

(Over 500 lines on purpose: this is what runs inside the sandboxed child, and its checks share one
case loop, one poisoned allocator and the candidate's imported module; the parent side is
fastkernels.judge.gate.)

`run_unit(spec, code)` runs everything in a sandboxed child (fastkernels.sandbox) and returns
a typed `UnitReport`. Inside the child, for every named shape and dtype of the task:

correctness, on several fresh random inputs, each call of the candidate made BEFORE the reference
(so freed memory cannot hand it the right answer), with freed allocator memory filled with 0xFF
bytes (NaN in every float format) first, and every tensor the harness frees poisoned the same way:
- reference: the baseline in fp32 on fp32 copies of the inputs (weights: the same values);
- tolerance by the case's dtype (TOLERANCES, the one definition), relative to the output's scale,
  or, where the baseline in that dtype is itself further off (deep blocks), within twice the
  baseline's own error against the fp32 reference;
- NaN/Inf never pass; shape, dtype and strides must match the baseline's output;
- no output may alias an input or a previous call's output; inputs must come back unchanged;
- one sample has small-magnitude inputs (scaled by 2**-9, exact in every float format), where an
  epsilon is no longer negligible; one refills the previous sample's input tensors in place, so a
  kernel that caches by address returns a stale answer;
- a reference output that is near-constant cannot tell kernels apart: that sample is not counted;
- the candidate must have launched a kernel of its own (a Triton launch, or on a GPU a profiled
  kernel named after one of its kernels); with --cuda-only, no framework compute kernel may run
  and on a GPU every kernel must run on the caller's stream.

timing (GPU only, the first dtype of the task, after correctness passed): fastkernels.measure.timing's
`compare` - the baseline eager, the baseline under torch.compile and the candidate warmed up, then
interleaved call by call on rotating inputs with L2 flushed: device time per call (launch cost
hidden) and wall time per call (launch cost included); a shape where the host takes longer to issue
a call than the GPU to run it is marked `launch_bound`, with both ratios. Achieved bytes/s or FLOP/s
against the measured device ceiling (fastkernels.measure.roofline).
The timer functions are checked for replacement after the candidate is imported and after timing.
On a CPU nothing is timed: the Triton interpreter's speed says nothing about a GPU's.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields

from fastkernels.rules.tolerance import (
    TOLERANCES,
    Tolerance,
    baseline_ratio,
    bound,
    rms,
)
from fastkernels.sandbox import is_cuda_error, run_job

SMALL_SCALE = 2.0**-9  # inputs of RMS ~0.002: variance ~4e-6, comparable to an RMSNorm eps of 1e-5/1e-6
# What a unit/gate job imports before it reads its candidate: a child with these already imported
# (and the CUDA context open) waits for the next job (fastkernels.sandbox, `warm`), so a gate
# pays neither the interpreter's start nor `import torch`.
# transformers.activations pulls in torch.distributed.tensor (via hub kernels and model loading):
# ~0.7 s of a CPU child's first build_spec, spent here ahead of the job instead.
GATE_PRELOAD = ("torch", "triton", "transformers", "transformers.models.auto.configuration_auto",
                "transformers.activations",
                "fastkernels.registry.tasks", "fastkernels.measure.unit",
                "fastkernels.judge.validate", "fastkernels.judge.gate")
CPU_TIMING_NOTE = "not timed: timings under the Triton interpreter on a CPU are not meaningful"
POISON_BYTE = 0xFF  # NaN as bf16, fp16 and fp32; -1 as an integer


@dataclass
class ShapeResult:
    """One named shape in one dtype: the correctness verdict and, when timed, the timings."""

    shape: str
    dtype: str
    dims: dict = field(default_factory=dict)
    passed: bool = False
    reason: str = ""
    max_abs_err: float | None = None
    max_rel_err: float | None = None  # max |cand - ref| / rms(ref)
    samples: int = 0
    baseline_eager_ms: float | None = None
    baseline_compile_ms: float | None = None
    candidate_ms: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    bound: str = ""
    bytes_per_s: float | None = None
    flops_per_s: float | None = None
    roofline_fraction: float | None = None
    compile_cached: bool = False  # baseline_compile_ms read from this GPU's cache, not measured now
    # Device times (*_ms, above) are interquartile means (timing.Stats.iqm) of per-call device time
    # with the host's launch cost hidden; wall times are per call issued back to back from Python,
    # launch cost included.
    candidate_wall_ms: float | None = None
    baseline_eager_wall_ms: float | None = None
    baseline_compile_wall_ms: float | None = None
    speedup_wall_vs_eager: float | None = None
    speedup_wall_vs_compile: float | None = None  # what a caller pays per call, launch included
    # The host takes longer to issue a call than the GPU to run it (wall > 1.5 x device): in an
    # eager caller the launch cost decides, and speedup_vs_eager (device time) is not what it sees.
    launch_bound: bool = False
    timing_method: str = ""  # "device" (spin-held batches) or "events" (a forward that blocks the host)
    timing: dict | None = None  # every subject's device and wall Stats (median, quartiles, min, max, n)


@dataclass
class UnitReport:
    op: str
    model_id: str = ""
    class_name: str = ""
    device: str = ""
    cuda_only: bool = False
    passed: bool = False
    error: str = ""  # why the run as a whole failed (import, crash, timeout, cheating) - "" if not
    kind: str = "ok"  # the sandbox job's kind
    shapes: list[ShapeResult] = field(default_factory=list)
    timing_note: str = ""
    ceilings: dict | None = None
    seconds: float = 0.0
    # Where the child's time went (s): setup (torch, the harness, the model config), import_candidate,
    # checks (profiler + correctness), timing (compile included); with `seconds` (the whole job) the
    # rest is the interpreter's start (and, in run_gate, the validation stage).
    phase_seconds: dict = field(default_factory=dict)

    # The one definition of the figures read off a report (the agent's summary, tracking, history
    # and the cockpit all call these): over the shapes that passed and were timed.
    def speedups(self, key: str = "speedup_vs_eager") -> list[float]:
        """One ShapeResult figure (a speedup or roofline_fraction) of every passed, timed shape."""
        return [v for s in self.shapes if s.passed and (v := getattr(s, key)) is not None]

    @property
    def best_speedup(self) -> float | None:
        """The highest device-time speedup over eager of a passed shape."""
        vals = self.speedups()
        return max(vals) if vals else None

    def speedup_range(self, key: str = "speedup_vs_eager") -> list[float] | None:
        """[lowest, highest] of one figure over the passed, timed shapes (None: nothing timed)."""
        vals = self.speedups(key)
        return [min(vals), max(vals)] if vals else None

    @property
    def best_roofline(self) -> float | None:
        vals = self.speedups("roofline_fraction")
        return max(vals) if vals else None

    def metrics(self) -> dict[str, float]:
        """What tracking records per operator: correct (1/0), and the geometric means over the timed
        shapes of the device-time speedups over eager and over torch.compile."""
        out = {"correct": 1.0 if self.passed else 0.0}
        for name, key in (("speedup", "speedup_vs_eager"), ("speedup_compile", "speedup_vs_compile")):
            vals = [v for v in self.speedups(key) if v > 0]
            if vals:
                out[name] = math.exp(sum(math.log(v) for v in vals) / len(vals))
        return out

    def failure_message(self) -> str:
        """What went wrong, fit to show a person or feed back to the LLM ("" when passed)."""
        if self.passed:
            return ""
        lines = []
        if self.error:
            lines.append(self.error)
        bad = [s for s in self.shapes if not s.passed]
        if bad:
            head = f"{self.op} {self.class_name}: wrong on {len(bad)} of {len(self.shapes)} shape/dtype cases:"
            lines.append(head)
            lines += [f"- {s.shape} {_fmt_dims(s.dims)} {s.dtype}: {s.reason}" for s in bad]
        return "\n".join(lines) or f"{self.op}: failed"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_speedup"] = self.best_speedup
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UnitReport":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        shape_names = {f.name for f in fields(ShapeResult)}
        kw["shapes"] = [ShapeResult(**{k: v for k, v in s.items() if k in shape_names}) for s in d.get("shapes", [])]
        return cls(**kw)


def _fmt_dims(dims: dict) -> str:
    inner = ",".join(f"{k}={v}" for k, v in dims.items() if k != "init")
    return f"[{inner}]" if inner else ""


# ---- the child side ------------------------------------------------------------------------

class _Reject(Exception):
    """A verdict about the candidate for one case (not a harness bug)."""


def _spec_from_payload(payload):
    from fastkernels.registry.tasks import build_spec

    d = payload["spec"]
    spec = build_spec(payload["level"], payload["name"], d["model_id"], d["tiny"])
    spec.shapes = d["shapes"]
    spec.init_args = d["init_args"]
    spec.dtypes = tuple(d["dtypes"])
    spec.tp = d.get("tp", 1)
    return spec


class _Launches:
    """Counts Triton kernel launches (compiled or interpreted) while the candidate runs."""

    count = 0
    originals: dict = {}

    @classmethod
    def install(cls) -> None:
        try:
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction
        except ImportError:
            return
        for klass in (JITFunction, InterpretedFunction):
            original = cls.originals.setdefault(klass, klass.run)

            def run(self, *args, _original=original, **kwargs):
                if not kwargs.get("warmup"):
                    cls.count += 1
                return _original(self, *args, **kwargs)

            klass.run = run

    @classmethod
    def uninstall(cls) -> None:
        """Put the launchers back (before timing: the counter costs a Python call per launch)."""
        for klass, original in cls.originals.items():
            klass.run = original


def _flatten(obj, path="out"):
    import torch

    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, (tuple, list)):
        out = []
        for i, x in enumerate(obj):
            out += _flatten(x, f"{path}[{i}]")
        return out
    return [(path, obj)]


def _storage_span(t):
    if t.numel() == 0:
        return None
    start = t.untyped_storage().data_ptr()
    return (start, start + t.untyped_storage().nbytes())


def _overlaps(a, b) -> bool:
    return a is not None and b is not None and a[0] < b[1] and b[0] < a[1]


def _poison(tensors) -> None:
    """Overwrite tensors the harness is about to free, so their memory never holds a right answer."""
    import torch

    with torch.no_grad():
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.numel():
                try:
                    t.reshape(-1).view(torch.uint8).fill_(POISON_BYTE)
                except RuntimeError:  # not viewable as bytes (non-contiguous): NaN or -1 element-wise
                    t.fill_(float("nan") if t.is_floating_point() else -1)


def _scrub_free_memory(device, sizes: list[int]) -> None:
    """Fill memory the allocator will hand out next with 0xFF, so an output the candidate never
    wrote reads as NaN rather than whatever the harness computed last. `sizes`: byte sizes the
    candidate is likely to allocate (those of its inputs): freed blocks of the same size are reused
    first, by the CUDA caching allocator and by malloc alike."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    blocks = [torch.empty(max(sum(sizes), 64 << 20 if device.type == "cuda" else 1 << 20), dtype=torch.uint8,
                          device=device)]
    blocks += [torch.empty(n, dtype=torch.uint8, device=device) for n in sizes for _ in range(4)]
    if device.type == "cuda":
        blocks += [torch.empty(1 << 20, dtype=torch.uint8, device=device) for _ in range(8)]
    for b in blocks:
        b.fill_(POISON_BYTE)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del blocks


def _compare(path, cand, ref, expect, tol: Tolerance):
    """Check one output tensor. Returns (max_abs, max_rel, skipped_near_constant)."""
    import torch

    if not isinstance(cand, torch.Tensor):
        raise _Reject(f"{path} is a {type(cand).__name__}, the baseline returns a tensor")
    if tuple(cand.shape) != tuple(expect.shape):
        raise _Reject(f"{path} has shape {tuple(cand.shape)}, expected {tuple(expect.shape)}")
    if cand.dtype != expect.dtype:
        raise _Reject(f"{path} has dtype {str(cand.dtype).replace('torch.', '')}, expected "
                      f"{str(expect.dtype).replace('torch.', '')}")
    if cand.device.type != expect.device.type:
        raise _Reject(f"{path} is on {cand.device}, expected {expect.device}")
    strides = [s for s, n in zip(cand.stride(), cand.shape) if n > 1]
    want = [s for s, n in zip(expect.stride(), expect.shape) if n > 1]
    if strides != want:
        raise _Reject(f"{path} has strides {tuple(cand.stride())}, the baseline's output has "
                      f"{tuple(expect.stride())}: return the same memory layout (e.g. .contiguous())")
    if not (cand.is_floating_point() or cand.is_complex()):
        same = cand == ref.to(cand.dtype)
        if not bool(same.all()):
            n = int((~same).sum())
            idx = tuple(int(i) for i in (~same).nonzero()[0])
            raise _Reject(f"{path}: {n} of {cand.numel()} values differ (first at index {idx}: got "
                          f"{cand[idx].item()}, expected {ref[idx].item()})")
        return 0.0, 0.0, False
    c, r = cand.detach().float(), ref.detach().float()
    bad = ~torch.isfinite(c) & torch.isfinite(r)
    if bool(bad.any()):
        n = int(bad.sum())
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise _Reject(f"{path} has {n} NaN/Inf value(s) where the reference is finite (first at index {idx}: "
                      f"{c[idx].item()}); NaN is what an output element the kernel never wrote reads as here")
    scale = rms(r)
    err = (c - r).abs()
    max_abs = float(err.max()) if err.numel() else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    near_constant = r.numel() > 1 and float(r.std()) <= 2 * tol.atol * scale
    if near_constant:
        return max_abs, max_rel, True
    allowed = bound(r, tol)
    over = err > allowed
    if bool(over.any()) and expect.is_floating_point() and expect.shape == cand.shape:
        # Deep blocks: the baseline's own dtype-vs-fp32 error is the floor (fastkernels.rules.tolerance).
        if baseline_ratio(c, expect.detach().float(), r) <= 1.0:
            over = torch.zeros_like(over)
    if bool(over.any()):
        n = int(over.sum())
        idx = tuple(int(i) for i in torch.unravel_index(torch.argmax(err - allowed), err.shape))
        garbage = " (values this far off are garbage: elements the kernel never wrote?)" if max_rel > 1e3 else ""
        raise _Reject(f"{path}: {n} of {c.numel()} elements outside tolerance; max abs error {max_abs:.3g} "
                      f"({max_rel:.3g} x the output's RMS {scale:.3g}); worst at index {idx}: got "
                      f"{c[idx].item():.6g}, expected {r[idx].item():.6g} (allowed {float(allowed[idx]):.3g}){garbage}")
    return max_abs, max_rel, False


def _to_fp32(inputs):
    import torch

    return tuple(x.detach().float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _candidate_frame(exc: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith("candidate.py")]
    return f" (line {frames[-1].lineno} of the kernel file: `{(frames[-1].line or '').strip()}`)" if frames else ""


def _check_case(spec, cls, shape, dtype, device, payload, cost):
    """Correctness of one shape in one dtype. Returns a ShapeResult."""
    import copy

    import torch

    from fastkernels.registry.tasks import build_baseline, build_inputs, dtype_of

    dims = spec.shapes[shape]
    result = ShapeResult(shape=shape, dtype=dtype, dims=dims, bound=dims.get("bound", spec.bound))
    tol = TOLERANCES[dtype]
    inplace = set(getattr(spec.task(), "INPLACE_INPUTS", ()))
    baseline = build_baseline(spec, shape, dtype, device, seed=0)
    reference = copy.deepcopy(baseline).float()
    try:
        cand = cls(**spec.init_args_for(shape))
        cand = cand.to(device=device, dtype=dtype_of(dtype)).eval()
        missing = [k for k in baseline.state_dict() if k not in cand.state_dict()]
        if missing:
            raise _Reject(f"the candidate has no parameter(s) {', '.join(missing)}; keep the baseline's "
                          "parameter names so weights load by state dict")
        cand.load_state_dict(baseline.state_dict(), strict=False)
    except _Reject:
        raise
    except Exception as exc:
        raise _Reject(f"building the candidate failed: {type(exc).__name__}: {exc}{_candidate_frame(exc)}") from None
    sizes = sorted({x.numel() * x.element_size() for x in build_inputs(spec, shape, dtype, device, 0)
                    if isinstance(x, torch.Tensor)})
    previous_outputs = []  # kept alive: an output sharing their memory is a cached result
    prev_inputs = None
    plan = [("fresh", s) for s in range(payload["seeds"])] + [("small", payload["seeds"])] + [("refill", payload["seeds"] + 1)]
    counted, skipped, worst_abs, worst_rel = 0, 0, 0.0, 0.0
    for what, s in plan:
        seed = 7919 * (s + 1) + 13
        fresh = build_inputs(spec, shape, dtype, device, seed)
        if what == "small":
            if not any(isinstance(x, torch.Tensor) and x.is_floating_point() for x in fresh):
                continue
            fresh = tuple(x * SMALL_SCALE if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in fresh)
        if what == "refill" and prev_inputs is not None:
            with torch.no_grad():
                for dst, src in zip(prev_inputs, fresh):
                    if isinstance(dst, torch.Tensor):
                        dst.copy_(src)
            inputs = prev_inputs
        else:
            inputs = fresh
        saved = [x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]
        _scrub_free_memory(device, sizes)
        before = _Launches.count
        try:
            with torch.no_grad():
                out = cand(*inputs)
            _sync(device)
        except Exception as exc:
            if is_cuda_error(str(exc)):
                raise  # the context is gone: the job ends, the sandbox reports it
            raise _Reject(f"forward raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          f"{_candidate_frame(exc)}") from None
        launched = _Launches.count - before
        flat = _flatten(out)
        # Aliasing: an output sharing memory with an input, or with an earlier call's output.
        for path, t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            span = _storage_span(t)
            for i, x in enumerate(inputs):
                if isinstance(x, torch.Tensor) and i not in inplace and _overlaps(span, _storage_span(x)):
                    raise _Reject(f"{path} shares memory with input #{i}: the kernel returns its input or a "
                                  "view of it instead of computing a new tensor")
            for old in previous_outputs:
                if _overlaps(span, _storage_span(old)):
                    raise _Reject(f"{path} is the same memory as the output of an earlier call with different "
                                  "inputs: the kernel returns a cached result instead of computing it")
        for i, (x, keep) in enumerate(zip(inputs, saved)):
            if isinstance(x, torch.Tensor) and i not in inplace and not torch.equal(x, keep):
                raise _Reject(f"input #{i} was modified in place; the operator must leave its inputs unchanged")
        if device.type == "cpu" and launched == 0 and payload["require_kernel"]:  # on a GPU the profiler check decides this
            raise _Reject("no kernel of the candidate's own ran during forward (no Triton launch): the "
                          "result came from PyTorch ops or the baseline, not from a kernel")
        # Reference after the candidate, on fp32 copies; then the baseline in the case's dtype for the
        # expected dtype, shape and layout.
        with torch.no_grad():
            ref = reference(*_to_fp32(inputs))
            expect = baseline(*inputs)
        _sync(device)
        flat_ref, flat_exp = _flatten(ref), _flatten(expect)
        if [p for p, _ in flat] != [p for p, _ in flat_exp]:
            raise _Reject(f"returns {_structure(out)}, the baseline returns {_structure(expect)}")
        any_counted = False
        for (path, c), (_, r), (_, e) in zip(flat, flat_ref, flat_exp):
            if not isinstance(e, torch.Tensor):
                continue
            try:
                a, rel, constant = _compare(path, c, r, e, tol)
            except _Reject as rej:
                note = {"small": " [inputs scaled by 2**-9, where the epsilon matters: check eps]",
                        "refill": " [same input tensors as the previous call, refilled with new values: "
                                  "does the kernel cache results?]"}.get(what, "")
                raise _Reject(f"{rej}{note}") from None
            if not constant:
                any_counted = True
                worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, rel)
        counted += any_counted
        skipped += not any_counted
        previous_outputs += [t for _, t in flat if isinstance(t, torch.Tensor)]
        _poison([t for _, t in flat_ref] + [t for _, t in flat_exp])
        del ref, expect
        if what != "refill":
            prev_inputs = inputs
    if counted == 0:
        raise _Reject("the reference output is near-constant on every input drawn: this shape cannot tell "
                      "kernels apart (a task bug; report it)")
    result.passed = True
    result.samples = counted
    result.max_abs_err, result.max_rel_err = worst_abs, worst_rel
    result.reason = f"ok: {counted} inputs within {dtype} tolerance" + (
        f" ({skipped} with a near-constant reference not counted)" if skipped else "")
    return result


def _structure(obj) -> str:
    import torch

    if isinstance(obj, torch.Tensor):
        return "a tensor"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def _profile_kernels(fn, args, workdir):
    """Run fn(*args) under the profiler; the GPU kernels it launched as (name, stream), plus the
    stream of a marker kernel launched just before it on the caller's stream."""
    import os

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        marker = torch.full((1,), 1.0, device="cuda")
        torch.cuda.synchronize()
        with torch.no_grad():
            fn(*args)
        torch.cuda.synchronize()
    path = os.path.join(workdir, "unit_trace.json")
    prof.export_chrome_trace(path)
    with open(path) as fh:
        events = json.load(fh).get("traceEvents", [])
    os.remove(path)
    del marker
    return kernels_from_trace(events)


def kernels_from_trace(events: list[dict]):
    """(stream of the first kernel - the marker -, [(name, stream) of every later kernel])."""
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e.get("ts", 0))
    if not kernels:
        return None, []

    def stream(e):  # Kineto puts the stream in args.stream and, as the trace row, in tid
        return e.get("args", {}).get("stream", e.get("tid"))

    return stream(kernels[0]), [(e.get("name", ""), stream(e)) for e in kernels[1:]]


_ALLOWED_FRAMEWORK = ("fill", "Fill", "memset", "Memset", "memcpy", "Memcpy")


def _gpu_kernel_check(spec, cls, shape, dtype, device, payload):
    """GPU only: from the profiler trace, the candidate's own kernel ran, every kernel ran on the
    caller's stream, and with --cuda-only no framework compute kernel ran."""
    import os

    import torch

    from fastkernels.registry.tasks import build_baseline, build_inputs, dtype_of

    baseline = build_baseline(spec, shape, dtype, device, seed=0)
    cand = cls(**spec.init_args_for(shape)).to(device=device, dtype=dtype_of(dtype)).eval()
    cand.load_state_dict(baseline.state_dict(), strict=False)
    inputs = build_inputs(spec, shape, dtype, device, 4242)
    with torch.no_grad():
        cand(*inputs)  # compile/autotune outside the trace
    torch.cuda.synchronize()
    before = _Launches.count
    home, kernels = _profile_kernels(cand, inputs, os.getcwd())
    launched = _Launches.count - before
    judge_kernels(home, kernels, payload["kernel_names"], launched, require_kernel=payload["require_kernel"],
                  cuda_only=payload["cuda_only"])


def judge_kernels(home, kernels, names, launched: int, *, require_kernel: bool, cuda_only: bool) -> None:
    """The verdict on the kernels one forward launched (from the profiler); raises _Reject."""
    own = [k for k, _ in kernels if any(n in k for n in names)]
    off_stream = sorted({k for k, s in kernels if home is not None and s != home})
    if off_stream:
        raise _Reject(f"kernel(s) ran on a stream other than the caller's ({', '.join(off_stream)[:200]}): work "
                      "on a side stream escapes synchronisation and the timer; launch on the current stream")
    if not own and launched == 0 and require_kernel:
        seen = ", ".join(sorted({k[:60] for k, _ in kernels})[:6]) or "none"
        raise _Reject(f"the profiler saw no kernel of the candidate's own ({', '.join(names) or 'it defines none'}) "
                      f"during forward; kernels that ran: {seen}. The result came from framework ops")
    if cuda_only:
        framework = sorted({k for k, _ in kernels if k not in own and not any(a in k for a in _ALLOWED_FRAMEWORK)})
        if framework:
            raise _Reject(f"--cuda-only: framework compute kernel(s) ran during forward: "
                          f"{'; '.join(x[:80] for x in framework[:4])}. Do all the computation in your CUDA kernel")


def _compile_key(spec, shape, dtype) -> str:
    """What a compiled baseline's time depends on: GPU, torch, the baseline's code, weights' shapes."""
    import hashlib

    import torch

    code = hashlib.sha1(spec.source_code.encode()).hexdigest()[:12]
    dims = json.dumps({"init": spec.init_args_for(shape), "shape": spec.shapes[shape]}, sort_keys=True)
    # "device-v2": spin-held per-call device time (times measured by earlier methods are not reused)
    return f"device-v2|{torch.cuda.get_device_name()}|torch {torch.__version__}|{spec.key}|{code}|{dims}|{dtype}"


def _compile_cache_path():
    from fastkernels.measure.roofline import cache_path

    return cache_path().parent / "compiled_baseline_ms.json"


def _compile_cache() -> dict:

    try:
        return json.loads(_compile_cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _compile_cache_put(key: str, ms: float, wall_ms: float | None) -> None:
    """torch.compile of a baseline takes seconds to a minute per shape and does not depend on the
    candidate: measured once per GPU, torch version and baseline, then read back."""
    import os

    data = _compile_cache()
    data[key] = {"ms": ms, "wall_ms": wall_ms}  # device time, and wall time per back-to-back call
    path = _compile_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _time_shape(spec, cls, shape, dtype, device, payload, result, cost, ceilings):
    import copy

    import torch

    from fastkernels.measure.roofline import achieved
    from fastkernels.measure.timing import compare
    from fastkernels.registry.tasks import build_baseline, build_inputs, dtype_of

    baseline = build_baseline(spec, shape, dtype, device, seed=0)
    cand = cls(**spec.init_args_for(shape)).to(device=device, dtype=dtype_of(dtype)).eval()
    cand.load_state_dict(baseline.state_dict(), strict=False)
    sets = [build_inputs(spec, shape, dtype, device, 100 + i) for i in range(4)]
    with torch.no_grad():
        subjects = {"eager": baseline, "candidate": cand}
        cached = None
        if payload.get("compile_baseline", True):
            key = _compile_key(spec, shape, dtype)
            cached = _compile_cache().get(key) if payload.get("compile_cache", True) else None
            if isinstance(cached, dict) and cached.get("wall_ms") is not None:  # older entries: a bare ms, re-timed
                result.baseline_compile_ms, result.compile_cached = cached["ms"], True
                result.baseline_compile_wall_ms = cached["wall_ms"]
            else:
                try:
                    compiled = torch.compile(copy.deepcopy(baseline), dynamic=False)
                    for args in sets[:2]:
                        compiled(*args)
                    subjects["compile"] = compiled
                except Exception as exc:  # noqa: BLE001 - a compile failure is a missing number, not a verdict
                    result.reason += f"; torch.compile baseline failed: {type(exc).__name__}"
        # All subjects interleaved call by call on the same rotating inputs (fastkernels.measure.timing):
        # none gets the cold clocks of going first, none a quieter moment of the machine.
        cmp = compare(subjects, sets)
        result.timing = cmp.to_dict()
        result.timing_method = cmp.method
        result.candidate_ms = cmp.device["candidate"].iqm
        result.baseline_eager_ms = cmp.device["eager"].iqm
        result.candidate_wall_ms = cmp.wall["candidate"].iqm
        result.baseline_eager_wall_ms = cmp.wall["eager"].iqm
        result.launch_bound = cmp.launch_bound("candidate") or cmp.launch_bound("eager")
        if "compile" in cmp.device:
            result.baseline_compile_ms = cmp.device["compile"].iqm
            result.baseline_compile_wall_ms = cmp.wall["compile"].iqm
            _compile_cache_put(key, result.baseline_compile_ms, result.baseline_compile_wall_ms)
        # Same tensors, new values: a kernel that memoised by address during timing is caught here.
        fresh = build_inputs(spec, shape, dtype, device, 999)
        for dst, src in zip(sets[0], fresh):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        out = cand(*sets[0])
        ref = copy.deepcopy(baseline).float()(*_to_fp32(sets[0]))
        expect = baseline(*sets[0])
    for (path, c), (_, r), (_, e) in zip(_flatten(out), _flatten(ref), _flatten(expect)):
        if isinstance(e, torch.Tensor):
            try:
                _compare(path, c, r, e, TOLERANCES[dtype])
            except _Reject as rej:
                raise _Reject(f"after timing, new values in the same input tensors gave a wrong result "
                              f"({rej}): the kernel caches results across calls") from None
    result.speedup_vs_eager = result.baseline_eager_ms / result.candidate_ms if result.candidate_ms else None
    if result.baseline_compile_ms and result.candidate_ms:
        result.speedup_vs_compile = result.baseline_compile_ms / result.candidate_ms
    if result.candidate_wall_ms:
        result.speedup_wall_vs_eager = result.baseline_eager_wall_ms / result.candidate_wall_ms
        if result.baseline_compile_wall_ms:
            result.speedup_wall_vs_compile = result.baseline_compile_wall_ms / result.candidate_wall_ms
    if result.launch_bound:
        result.reason += (f"; launch-bound: issuing a call from Python takes longer than the GPU runs it "
                          f"(wall {1e3 * result.baseline_eager_wall_ms:.1f} us eager, "
                          f"{1e3 * result.candidate_wall_ms:.1f} us candidate, per call), so an eager "
                          f"caller sees {result.speedup_wall_vs_eager:.2f}x where the GPU sees "
                          f"{result.speedup_vs_eager:.2f}x")
    bound = spec.shapes[shape].get("bound", spec.bound)  # a shape may override (attention: prefill is compute-bound)
    result.bound = bound
    roof = achieved(cost, result.candidate_ms, bound, ceilings)
    result.bytes_per_s, result.flops_per_s = roof["bytes_per_s"], roof["flops_per_s"]
    result.roofline_fraction = roof["roofline_fraction"]


def _unit_job(payload: dict) -> dict:
    """Sandbox side of run_unit."""
    return measure_candidate(payload, "candidate.py", "fk_candidate")


def precompile_baselines(spec, *, timeout: float = 600.0, gpu: str | None = None):
    """Compile `spec`'s baseline under torch.compile at every shape (the first dtype), as the unit
    benchmark does, in a sandboxed child, so that Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR)
    are warm when the unit job compiles it again. Benchmarks start one per operator in parallel
    with work that times nothing. Returns the JobResult (value: seconds per shape)."""
    from fastkernels.gpu.devices import GpuPool

    payload = {"spec": spec.to_dict(), "level": spec.level, "name": spec.name}
    return run_job(_precompile_job, payload, timeout=timeout,
                   label=f"{spec.key}: compile the baseline", env=GpuPool.job_env(gpu))


def _precompile_job(payload: dict) -> dict:
    import copy

    import torch

    from fastkernels.registry.tasks import build_baseline, build_inputs

    spec = _spec_from_payload(payload)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = spec.dtypes[0]
    out = {}
    for shape in spec.shapes:
        t0 = time.perf_counter()
        baseline = build_baseline(spec, shape, dtype, device, seed=0)
        sets = [build_inputs(spec, shape, dtype, device, 100 + i) for i in range(2)]
        with torch.no_grad():
            compiled = torch.compile(copy.deepcopy(baseline), dynamic=False)
            for args in sets:
                compiled(*args)
        out[shape] = time.perf_counter() - t0
    return out


def _unit_many_job(payload: dict) -> dict:
    """Sandbox side of run_unit_many: the candidates one after another in this child. A candidate
    that raises while importing is its own verdict; one that replaced timing functions ends the
    batch (the rest run in a fresh child, so nothing it did can be charged to them)."""
    from fastkernels.measure import timing as timing_mod

    reports = []
    for i, item in enumerate(payload["items"]):
        p = {**payload, **item}
        try:
            reports.append(measure_candidate(p, f"c{i}_candidate.py", f"fk_candidate_{i}"))
        except Exception as exc:  # noqa: BLE001 - an import that raises is this candidate's verdict
            text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
            if is_cuda_error(text):
                raise  # the context is gone: the parent reruns the rest one child each
            spec = _spec_from_payload(p)
            reports.append(UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                                      cuda_only=p["cuda_only"], passed=False, kind="exception",
                                      error=f"{p['label']}: raised: {text}{_candidate_frame(exc)}").to_dict())
        if timing_mod.replaced_timers():
            break
    return {"reports": reports}


def measure_candidate(payload: dict, filename: str, module_name: str) -> dict:
    import os

    t0 = time.perf_counter()
    import torch

    from fastkernels.gpu.cuda_build import cached_builds
    from fastkernels.measure import (
        timing as timing_mod,  # captures the timer functions first
    )
    from fastkernels.registry.tasks import dtype_of, load_module

    _Launches.install()
    spec = _spec_from_payload(payload)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    report = UnitReport(op=spec.key, model_id=spec.model_id, class_name=spec.class_name,
                        device=torch.cuda.get_device_name() if gpu else "cpu", cuda_only=payload["cuda_only"])
    path = os.path.join(os.getcwd(), filename)
    with open(path, "w") as fh:
        fh.write(payload["code"])
    phases = {"setup": time.perf_counter() - t0}
    t0 = time.perf_counter()
    with cached_builds():  # a raw CUDA kernel's load_inline: content-cached, built for this GPU
        module = load_module(path, name=module_name)
    phases["import_candidate"] = time.perf_counter() - t0
    report.phase_seconds = phases
    t0 = time.perf_counter()
    cls = getattr(module, spec.class_name, None)
    if not isinstance(cls, type):
        report.error = f"{payload['label']}: the file defines no class {spec.class_name!r}"
        return report.to_dict()
    replaced = timing_mod.replaced_timers()
    if replaced:
        report.error = (f"{payload['label']}: importing the kernel replaced timing functions ({', '.join(replaced)}); "
                        "a kernel must not touch the harness")
        return report.to_dict()
    config = spec.config()
    task = spec.task()
    for shape in spec.shapes:
        for dtype in spec.dtypes:
            try:
                if gpu and dtype == spec.dtypes[0]:
                    _gpu_kernel_check(spec, cls, shape, dtype, device, payload)
                res = _check_case(spec, cls, shape, dtype, device, payload, None)
            except _Reject as rej:
                res = ShapeResult(shape=shape, dtype=dtype, dims=spec.shapes[shape], passed=False,
                                  reason=str(rej), bound=spec.bound)
            report.shapes.append(res)
    report.passed = all(s.passed for s in report.shapes) and bool(report.shapes)
    phases["checks"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if not gpu:
        report.timing_note = CPU_TIMING_NOTE
    elif not payload["timing"]:
        report.timing_note = "not timed (timing=False)"
    elif not report.passed:
        report.timing_note = "not timed: correctness failed"
    else:
        from fastkernels.measure.roofline import device_ceilings

        _Launches.uninstall()
        report.ceilings = device_ceilings()
        primary = spec.dtypes[0]
        for res in report.shapes:
            if res.dtype != primary:
                continue
            cost = task.cost(config, spec.shapes[res.shape], dtype_of(primary))
            try:
                _time_shape(spec, cls, res.shape, primary, device, payload, res, cost, report.ceilings)
            except _Reject as rej:
                res.passed, res.reason = False, str(rej)
        cached = " (torch.compile baseline times from this GPU's cache)" if any(r.compile_cached for r in report.shapes) else ""
        report.timing_note = (f"device time per call (interquartile mean of 200; GPU held while calls are enqueued, so launch cost "
                              f"does not show), baseline and candidate interleaved call by call, L2 flushed, "
                              f"4 rotating input sets, {primary}{cached}; wall time per call beside it; "
                              "roofline vs the measured copy bandwidth (memory-bound) or bf16 matmul (compute-bound)")
        replaced = timing_mod.replaced_timers()
        if replaced:
            report.error = f"{payload['label']}: timing functions were replaced while it ran ({', '.join(replaced)})"
        report.passed = all(s.passed for s in report.shapes) and not replaced
        phases["timing"] = time.perf_counter() - t0
    return report.to_dict()
