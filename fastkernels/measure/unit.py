"""The unit benchmark's results and its rule for one output: `UnitReport` (per operator) and
`ShapeResult` (per shape and dtype), `_compare` (one output tensor against the fp32 reference, with
the baseline in the case's dtype as the noise floor: fastkernels.rules.tolerance), and the clean
child that warms Inductor's caches for a baseline (`precompile_baselines`).

How a candidate is run and judged: fastkernels.judge.gate (the parent), fastkernels.measure.runner
(the candidate's child, which only writes outputs and times the candidate), fastkernels.judge.referee
(a clean child: references, verdict, baseline timings). What the benchmark checks, per named shape
and dtype of the task:

correctness, on several fresh random inputs and random weights (seeds drawn per run), each call of
the candidate made with freed allocator memory filled with 0xFF bytes (NaN in every float format):
- reference: the baseline in fp32 on fp32 copies of the inputs (weights: the same values), computed
  in a process that never imported the candidate;
- the acceptance rule of fastkernels.rules.tolerance: no worse than a few times the baseline's own
  rounding error against fp32, at the worst element, in RMS and in mean (a scaled or shifted output
  fails even when every element is within 2%);
- NaN/Inf never pass; shape, dtype and strides must match the baseline's output;
- no output may alias an input or a previous call's output; inputs must come back unchanged;
- one sample has small-magnitude inputs (scaled by 2**-9, exact in every float format), where an
  epsilon is no longer negligible; one refills the previous sample's input tensors in place, so a
  kernel that caches by address returns a stale answer;
- a reference output that is near-constant cannot tell kernels apart: that sample is not counted;
- for the first dtype, the module also under torch.compile(fullgraph=True) and, on a GPU, captured
  in a CUDA graph and replayed on new values: both must run (no graph break) and match;
- the candidate must have launched a kernel of its own (a Triton launch, or on a GPU profiled
  kernels named exactly as its own doing most of the GPU time); with --cuda-only, no framework
  compute kernel may run and on a GPU every kernel must run on the caller's stream.

timing (GPU only, the first dtype of the task, after correctness passed): fastkernels.measure.timing's
stopwatch - device time per call (launch cost hidden) and wall time per call (launch cost included)
on distinct input sets with L2 flushed - the candidate in its own process, the baseline eager and
under torch.compile in the referee's, on the same input sets; outputs of timed calls checked
afterwards; a figure above what the hardware can do is rejected. Achieved bytes/s or FLOP/s against
the measured device ceiling (fastkernels.measure.roofline). A shape where the host takes longer to
issue a call than the GPU to run it is marked `launch_bound`, with both ratios.
On a CPU nothing is timed: the Triton interpreter's speed says nothing about a GPU's.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields

from fastkernels.rules.tolerance import (
    NOISE_MAX,
    Tolerance,
    noise_verdict,
    rms,
)
from fastkernels.sandbox import run_job

# What a unit/gate job imports before it reads its candidate: a child with these already imported
# (and the CUDA context open) waits for the next job (fastkernels.sandbox, `warm`), so a gate
# pays neither the interpreter's start nor `import torch`. The referee's child preloads the same.
# transformers.activations pulls in torch.distributed.tensor (via hub kernels and model loading):
# ~0.7 s of a CPU child's first build_spec, spent here ahead of the job instead.
GATE_PRELOAD = ("torch", "triton", "transformers", "transformers.models.auto.configuration_auto",
                "transformers.activations",
                "fastkernels.registry.tasks", "fastkernels.measure.unit", "fastkernels.measure.runner",
                "fastkernels.judge.referee", "fastkernels.judge.validate", "fastkernels.judge.gate")
CPU_TIMING_NOTE = "not timed: timings under the Triton interpreter on a CPU are not meaningful"


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
    seed: int | None = None  # the gate's plan seed (inputs and weights): run_unit(..., seed=) reproduces it

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
# ---- judging one output -------------------------------------------------------------------

class _Reject(Exception):
    """A verdict about the candidate for one case (not a harness bug)."""


ROUTED_ROWS = 0.02  # routed (MoE) outputs: the share of rows that may differ by a flipped expert choice


def _routed_rows_pass(c, base, r, dtype, allowed) -> bool:
    """A mixture of experts picks each token's experts by comparing router scores: where two are
    nearly tied, a kernel that rounds differently from the baseline picks the other expert and that
    token's row differs by far more than rounding (the baseline's own bf16 run does the same against
    fp32 on other tokens). Such an output passes when at most ROUTED_ROWS of its rows are off and the
    rest pass the whole rule."""
    last = c.shape[-1] if c.ndim else 1
    rows_c, rows_b, rows_r = (t.reshape(-1, last) for t in (c, base, r))
    over = ((rows_c - rows_r).abs() > allowed.reshape(-1, last) if hasattr(allowed, "reshape") else
            (rows_c - rows_r).abs() > allowed).any(-1)
    n_rows = rows_c.shape[0]
    if int(over.sum()) > max(1, int(ROUTED_ROWS * n_rows)) or int(over.sum()) == n_rows:
        return False
    keep = ~over
    return noise_verdict(rows_c[keep], rows_b[keep], rows_r[keep], dtype)[1] == ""


def _compare(path, cand, ref, expect, tol: Tolerance, routed: bool = False):
    """Check one output tensor. Returns (max_abs, max_rel, skipped_near_constant). `routed`: the
    output of a mixture of experts (see _routed_rows_pass)."""
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
    allowed, why = noise_verdict(c, expect.detach().float(), r, expect.dtype)
    if why and routed and _routed_rows_pass(c, expect.detach().float(), r, expect.dtype, allowed):
        why = ""
    if why == "max":
        n = int((err > allowed).sum())
        idx = tuple(int(i) for i in torch.unravel_index(torch.argmax(err - allowed), err.shape))
        at = float(allowed[idx]) if isinstance(allowed, torch.Tensor) else float(allowed)
        garbage = " (values this far off are garbage: elements the kernel never wrote?)" if max_rel > 1e3 else ""
        raise _Reject(f"{path}: {n} of {c.numel()} elements outside tolerance; max abs error {max_abs:.3g} "
                      f"({max_rel:.3g} x the output's RMS {scale:.3g}); worst at index {idx}: got "
                      f"{c[idx].item():.6g}, expected {r[idx].item():.6g} (allowed {at:.3g}: the larger of "
                      f"{NOISE_MAX:g}x the baseline's own worst error against fp32 and one rounding){garbage}")
    if why:
        raise _Reject(f"{path}: {why}: every element may be close, but the output as a whole is off "
                      "(scaled, shifted, or accumulated in low precision)")
    return max_abs, max_rel, False


def _to_fp32(inputs):
    import torch

    return tuple(x.detach().float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


def _structure(obj) -> str:
    import torch

    if isinstance(obj, torch.Tensor):
        return "a tensor"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)}"
    return f"a {type(obj).__name__}"


def precompile_baselines(spec, *, timeout: float = 600.0, gpu: str | None = None):
    """Compile `spec`'s baseline under torch.compile at every shape (the first dtype), as the unit
    benchmark does, in a sandboxed child, so that Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR)
    are warm when the unit job compiles it again. Benchmarks start one per operator in parallel
    with work that times nothing. Returns the JobResult (value: seconds per shape)."""
    from fastkernels.gpu.devices import GpuPool

    payload = {"spec": spec.to_dict(), "level": spec.level, "name": spec.name}  # read by _precompile_job
    return run_job(_precompile_job, payload, timeout=timeout,
                   label=f"{spec.key}: compile the baseline", env=GpuPool.job_env(gpu))


def _precompile_job(payload: dict) -> dict:
    import copy

    import torch

    from fastkernels.measure.runner import spec_from_dict
    from fastkernels.registry.tasks import build_baseline, build_inputs

    spec = spec_from_dict(payload["level"], payload["name"], payload["spec"])
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
