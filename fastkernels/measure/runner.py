"""The candidate's side of the unit benchmark: what runs in the one process that imports it.

This process is not trusted with anything that decides the verdict. It imports the candidate,
runs it on inputs whose seeds the parent chose, and writes what it returned to files in an exchange
folder the parent made; a clean process that never imported the candidate (fastkernels.judge.referee)
recomputes the same inputs, the baseline and the fp32 reference, and compares. So a candidate that
rewrites the harness at import, or writes a result file of its own, changes nothing but its own
outputs: a wrong output fails, a missing one fails.

What this side still checks (honest mistakes, each reported with a reason; a self-reported failure
can only hurt the candidate): the forward raises; an output shares memory with an input or with an
earlier call's output; an input was changed in place (the referee checks the saved inputs again);
no kernel of the candidate's own ran (a Triton launch under the interpreter; on a GPU, the profiler
sees none of its kernels, a kernel ran on another stream, or with --cuda-only a framework kernel
computed). Before every call, freed allocator memory is filled with 0xFF (NaN in every float format),
so an output element the kernel never wrote reads as NaN. For the task's first dtype two more
samples go to the referee: the module under torch.compile(fullgraph=True) (Inductor on a GPU,
aot_eager on a CPU), and on a GPU its forward captured in a CUDA graph and replayed on new values -
a graph break, a Dynamo error or a failed capture is the case's verdict, with the hint to register
the launch as a PyTorch operator (the model it goes into is compiled whole).

Timing (GPU only, after the referee has accepted a shape's outputs; the parent says which shapes by
writing `go.json`): the candidate alone, on a pool of distinct input sets (seeds from the parent),
each input's version counter bumped before every call (a cache keyed on the tensor and its version
never hits), fastkernels.measure.timing's stopwatch; the last output of every input set is written
back for the referee to check, and so is one call on the first set refilled in place with new values
(a cache keyed on the address returns a stale answer). The baselines are timed by the referee.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from fastkernels.sandbox import is_cuda_error

SMALL_SCALE = 2.0**-9  # inputs of RMS ~0.002: variance ~4e-6, comparable to an RMSNorm eps of 1e-5/1e-6
POISON_BYTE = 0xFF  # NaN as bf16, fp16 and fp32; -1 as an integer
POOL_BYTES = 2 << 30  # the timing pool of distinct input sets stays under this many bytes
POOL_SETS = 64  # and has at most this many sets
TIMED_CHECKS = 8  # outputs of timed calls checked by the referee, per shape (the parent picks them)
# The words the runner and the parent exchange through the candidate's folder, in order: the runner's
# READY (its outputs are written; its own case verdicts), the parent's GO (time these shapes), the
# runner's TIMED (which input sets each shape was timed on), the parent's PICK (which sets' timed
# outputs to write back, and the seed of the refill after timing: drawn only now, so nothing in the
# candidate's process knew them while it was timed).
READY, GO, TIMED, PICK = "ready.json", "go.json", "timed.json", "pick.json"


class Reject(Exception):
    """A verdict about the candidate for one case, from its own process (it can only fail itself)."""


@dataclass(frozen=True)
class Plan:
    """The inputs of the correctness samples of every case, chosen by the parent: `fresh` samples at
    seeds base+1.., one `small` (inputs scaled by SMALL_SCALE), one `refill` (the previous sample's
    input tensors refilled in place with the next seed's values); baseline weights at
    `weight_seed`; the timing pool at seeds timing_base.. and the refill after timing at
    timing_base - 1."""

    base: int
    samples: int
    weight_seed: int
    timing_base: int

    def steps(self, *, compiled: bool = False, graph: bool = False) -> list[tuple[str, int]]:
        """The samples of one case, in order (file k holds step k's outputs). `compiled`: one more,
        the module under torch.compile(fullgraph=True); `graph`: one more, its eager forward captured
        in a CUDA graph and replayed on new values (both for the task's first dtype)."""
        fresh = [("fresh", self.base + 1 + i) for i in range(self.samples)]
        out = fresh + [("small", self.base + 1 + self.samples), ("refill", self.base + 2 + self.samples)]
        if compiled:
            out.append(("compiled", self.base + 3 + self.samples))
        if graph:
            out.append(("graph", self.base + 4 + self.samples))
        return out

    def case_weight_seed(self, shape: str, dtype: str) -> int:
        import zlib

        return (self.weight_seed + zlib.crc32(f"{shape}/{dtype}".encode())) % (2**31)

    @classmethod
    def draw(cls, samples: int, seed: int | None = None) -> "Plan":
        """A plan with seeds nobody knew before this gate (or from `seed`, to reproduce one)."""
        import random
        import secrets

        rng = random.Random(seed if seed is not None else secrets.randbits(62))
        return cls(base=rng.randrange(1, 2**30), samples=samples, weight_seed=rng.randrange(1, 2**30),
                   timing_base=rng.randrange(2**30, 2**31 - POOL_SETS - 2))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunnerJob:
    """What the candidate's child is told. `items`: [{code, label, kernel_names, dir}] - one per
    candidate (run_unit_many runs several in one child, each writing into its own folder)."""

    spec: dict
    level: int
    name: str
    plan: dict
    items: list
    cuda_only: bool = False
    require_kernel: bool = True
    timing: bool = True
    compile_check: bool = True
    host_clock: bool = False  # time on a machine without a GPU (the protocol's tests; figures meaningless)
    wait_s: float = 600.0  # how long to wait for each of the parent's words

    @classmethod
    def from_dict(cls, d: dict) -> "RunnerJob":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class RunnerCase:
    shape: str
    dtype: str
    reject: str | None = None  # why the candidate's own process already failed this case
    written: int = 0  # output files written
    # why the compiled or CUDA-graph step failed: the verdict only if the outputs before it pass
    # (a wrong kernel is told what is wrong first)
    late: str | None = None


@dataclass
class RunnerResult:
    """What the candidate's child reports (untrusted: the referee reads only failures, and timings
    that it bounds by what the hardware allows)."""

    device: str = ""
    error: str = ""
    cases: list = field(default_factory=list)
    timing: dict = field(default_factory=dict)  # shape -> timing.Comparison.to_dict() of "candidate"
    phase_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def spec_from_dict(level: int, name: str, d: dict):
    from fastkernels.registry.tasks import build_spec

    spec = build_spec(level, name, d["model_id"], d["tiny"])
    spec.shapes = d["shapes"]
    spec.init_args = d["init_args"]
    spec.dtypes = tuple(d["dtypes"])
    spec.tp = d.get("tp", 1)
    return spec


def tree_map(fn, obj):
    """`obj` with fn applied to every tensor in it (inputs nest: a list of per-layer caches)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, x) for x in obj)
    return obj


def leaves(inputs) -> list[tuple[int, object]]:
    """(index of the top-level input, tensor) of every tensor in `inputs`, nested ones included."""
    import torch

    out = []

    def walk(i, x):
        if isinstance(x, torch.Tensor):
            out.append((i, x))
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(i, y)

    for i, x in enumerate(inputs):
        walk(i, x)
    return out


def refill(dst_inputs, src_inputs) -> None:
    """Copy the values of `src_inputs` into the tensors of `dst_inputs` (same structure), in place."""
    import torch

    with torch.no_grad():
        for (_, dst), (_, src) in zip(leaves(dst_inputs), leaves(src_inputs)):
            dst.copy_(src)


def case_inputs(spec, shape, dtype, device, what: str, seed: int):
    """The inputs of one correctness sample (the referee rebuilds the same ones)."""
    from fastkernels.registry.tasks import build_inputs

    fresh = build_inputs(spec, shape, dtype, device, seed)
    if what == "small":
        fresh = tuple(tree_map(lambda x: x * SMALL_SCALE if x.is_floating_point() else x, x) for x in fresh)
    return fresh


def has_float_input(inputs) -> bool:
    return any(x.is_floating_point() for _, x in leaves(inputs))


def case_file(folder: str, shape: str, dtype: str, k: int) -> str:
    return os.path.join(folder, f"case-{shape}-{dtype}-{k}.pt")


def timed_file(folder: str, shape: str, i: int) -> str:
    return os.path.join(folder, f"timed-{shape}-{i}.pt")


def flatten(obj, path="out"):
    import torch

    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, (tuple, list)):
        out = []
        for i, x in enumerate(obj):
            out += flatten(x, f"{path}[{i}]")
        return out
    return [(path, obj)]


def save_outputs(path: str, out, inputs=None) -> None:
    """One call's outputs (and the inputs as they were after it) in a file the referee loads with
    torch.load(weights_only=True): tensors on the CPU, anything else by its type's name."""
    import torch

    def plain(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu")
        return None

    data = {"paths": [p for p, _ in flatten(out)],
            "tensors": [plain(t) for _, t in flatten(out)],
            "types": [type(t).__name__ for _, t in flatten(out)],
            "strides": [list(t.stride()) if isinstance(t, torch.Tensor) else None for _, t in flatten(out)],
            "inputs": [plain(x) for _, x in leaves(inputs)] if inputs is not None else None}
    tmp = path + ".tmp"
    torch.save(data, tmp)
    os.replace(tmp, path)


# ---- memory hygiene -----------------------------------------------------------------------

def _storage_span(t):
    if t.numel() == 0:
        return None
    start = t.untyped_storage().data_ptr()
    return (start, start + t.untyped_storage().nbytes())


def _overlaps(a, b) -> bool:
    return a is not None and b is not None and a[0] < b[1] and b[0] < a[1]


def scrub_free_memory(device, sizes: list[int]) -> None:
    """Fill memory the allocator will hand out next with 0xFF, so an output the candidate never
    wrote reads as NaN rather than whatever ran last. `sizes`: byte sizes the candidate is likely to
    allocate (those of its inputs): freed blocks of the same size are reused first, by the CUDA
    caching allocator and by malloc alike."""
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


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def candidate_frame(exc: BaseException) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith("candidate.py")]
    return f" (line {frames[-1].lineno} of the kernel file: `{(frames[-1].line or '').strip()}`)" if frames else ""


_RUNTIME_PARAMS: dict = {}


def runtime_params(kernel) -> frozenset:
    """The names of a @triton.jit function's parameters that are not tl.constexpr."""
    import inspect

    known = _RUNTIME_PARAMS.get(kernel)
    if known is not None:
        return known
    params = getattr(kernel, "params", None)  # JITFunction: KernelParam.is_constexpr
    fn = getattr(kernel, "fn", None)
    if params:
        known = frozenset(p.name for p in params if not p.is_constexpr)
    elif fn is not None:
        known = frozenset(name for name, p in inspect.signature(fn).parameters.items()
                          if "constexpr" not in str(p.annotation))
    else:
        known = frozenset()
    _RUNTIME_PARAMS[kernel] = known
    return known


def float_args(kernel, args: tuple, kwargs: dict) -> list[str]:
    """The runtime (not tl.constexpr) parameters of a launch that receive a Python float. Triton
    types such an argument fp32 when it launches the kernel itself, but Inductor (the same kernel
    inside torch.compile, through triton_op/wrap_triton) types it fp64, and fp64 then spreads
    through the kernel's float math: a type error for a loop-carried value, half the speed
    elsewhere."""
    names = getattr(kernel, "arg_names", None) or []
    runtime = runtime_params(kernel)
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    return [n for n, v in bound.items() if n in runtime and isinstance(v, float)]


class Launches:
    """Counts Triton kernel launches (compiled or interpreted) while the candidate runs, and notes
    each kernel parameter a launch passes a Python float to at runtime (`floats`)."""

    count = 0
    originals: dict = {}
    floats: dict = {}  # (kernel name, parameter) -> None, in the order first seen

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
                    for name in float_args(self, args, kwargs):
                        cls.floats.setdefault((getattr(self.fn, "__name__", "?"), name), None)
                return _original(self, *args, **kwargs)

            klass.run = run

    @classmethod
    def uninstall(cls) -> None:
        """Put the launchers back (before timing: the counter costs a Python call per launch)."""
        for klass, original in cls.originals.items():
            klass.run = original


# ---- the candidate's kernels on a GPU -----------------------------------------------------

_ALLOWED_FRAMEWORK = ("fill", "Fill", "memset", "Memset", "memcpy", "Memcpy")


def _profile_kernels(fn, args, workdir):
    """Run fn(*args) under the profiler; the GPU kernels it launched as (name, stream), plus the
    stream of a marker kernel launched just before it on the caller's stream."""
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
    """(stream of the first kernel - the marker -, [(name, stream, duration us) of every later kernel])."""
    kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e.get("ts", 0))
    if not kernels:
        return None, []

    def stream(e):  # Kineto puts the stream in args.stream and, as the trace row, in tid
        return e.get("args", {}).get("stream", e.get("tid"))

    return stream(kernels[0]), [(e.get("name", ""), stream(e), float(e.get("dur", 0.0))) for e in kernels[1:]]


def _kernel_base(name: str) -> str:
    """A profiled kernel's own name: `void ns::name<T>(args)` -> `name`, a mangled `_Z4nameP...` or
    `_ZN2ns4nameE...` -> `name`; Triton's kernels carry the function's name."""
    import re

    if name.startswith("_Z"):
        nested = name.startswith("_ZN")
        pos, last = (3 if nested else 2), name
        while True:
            m = re.match(r"(\d+)", name[pos:])
            if not m:
                return last
            n = int(m.group(1))
            start = pos + len(m.group(1))
            last = name[start:start + n]
            pos = start + n
            if not nested or name[pos:pos + 1] == "E":
                return last
    head = name.split("(", 1)[0].strip()
    head = head.split("<", 1)[0].strip()
    return head.rsplit(" ", 1)[-1].rsplit("::", 1)[-1]


OWN_SHARE = 0.5  # the candidate's kernels must be at least this share of the forward's GPU time


def judge_kernels(home, kernels, names, launched: int, *, require_kernel: bool, cuda_only: bool) -> None:
    """The verdict on the kernels one forward launched (from the profiler); raises Reject. A kernel
    is the candidate's own when its name is exactly one it defines (Triton's compiled kernels carry
    the function's name; CUDA's are demangled to `name<...>(...)`); the candidate's kernels must do
    most of the work (OWN_SHARE of the GPU time), not one token launch beside framework kernels."""
    kernels = [k if len(k) == 3 else (*k, 0.0) for k in kernels]
    own = [k for k in kernels if _kernel_base(k[0]) in names]
    off_stream = sorted({k[0] for k in kernels if home is not None and k[1] != home})
    if off_stream:
        raise Reject(f"kernel(s) ran on a stream other than the caller's ({', '.join(off_stream)[:200]}): work "
                     "on a side stream escapes synchronisation and the timer; launch on the current stream")
    if not require_kernel:
        return
    if not own and launched == 0:
        seen = ", ".join(sorted({k[0][:60] for k in kernels})[:6]) or "none"
        raise Reject(f"the profiler saw no kernel of the candidate's own ({', '.join(names) or 'it defines none'}) "
                     f"during forward; kernels that ran: {seen}. The result came from framework ops")
    compute = [k for k in kernels if k in own or not any(a in k[0] for a in _ALLOWED_FRAMEWORK)]
    total = sum(k[2] for k in compute)
    mine = sum(k[2] for k in own)
    if total > 0 and mine < OWN_SHARE * total:
        others = sorted({_kernel_base(k[0])[:60] for k in compute if k not in own})[:4]
        raise Reject(f"the candidate's own kernels ran {100 * mine / total:.0f}% of the forward's GPU time; "
                     f"framework kernels did the rest ({', '.join(others)}): the work must be done by the "
                     "candidate's kernels, not beside them")
    if cuda_only:
        framework = sorted({k[0] for k in kernels if k not in own and not any(a in k[0] for a in _ALLOWED_FRAMEWORK)})
        if framework:
            raise Reject(f"--cuda-only: framework compute kernel(s) ran during forward: "
                         f"{'; '.join(x[:80] for x in framework[:4])}. Do all the computation in your CUDA kernel")


# ---- the job ------------------------------------------------------------------------------

def _build(spec, cls, shape, dtype, device, weight_seed):
    from fastkernels.registry.tasks import build_baseline, dtype_of

    baseline = build_baseline(spec, shape, dtype, device, seed=weight_seed)
    try:
        cand = cls(**spec.init_args_for(shape))
        cand = cand.to(device=device, dtype=dtype_of(dtype)).eval()
        missing = [k for k in baseline.state_dict() if k not in cand.state_dict()]
        if missing:
            raise Reject(f"the candidate has no parameter(s) {', '.join(missing)}; keep the baseline's "
                         "parameter names so weights load by state dict")
        cand.load_state_dict(baseline.state_dict(), strict=False)
    except Reject:
        raise
    except Exception as exc:
        raise Reject(f"building the candidate failed: {type(exc).__name__}: {exc}{candidate_frame(exc)}") from None
    del baseline
    return cand


def _call(cand, inputs, device):
    import torch

    try:
        with torch.no_grad():
            out = cand(*inputs)
        _sync(device)
        return out
    except Exception as exc:
        if is_cuda_error(str(exc)):
            raise  # the context is gone: the job ends, the sandbox reports it
        raise Reject(f"forward raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                     f"{candidate_frame(exc)}") from None


COMPILE_HINT = ("register each kernel launch as a PyTorch operator (torch.library.custom_op with a fake "
                "implementation, or torch.library.triton_op + wrap_triton) and keep host syncs (.item(), "
                ".tolist(), printing tensors) out of forward")


def compile_backend(device) -> str:
    """Inductor on a GPU; on a CPU aot_eager (Dynamo and AOTAutograd: the interpreter runs the
    kernels, Inductor cannot)."""
    return "inductor" if device.type == "cuda" else "aot_eager"


def _first_line(exc: BaseException) -> str:
    """The exception's first line and, for Dynamo's errors ("from user code:" frames), the last line
    of the kernel file it was tracing."""
    import re

    text = str(exc).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
    for i in range(len(lines) - 1, -1, -1):
        m = re.search(r'File "[^"]*candidate\.py", line (\d+)', lines[i])
        if m:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{out} (while tracing line {m.group(1)} of the kernel file: `{code[:160]}`)"
    return out


def _compiled_call(cand, inputs, device):
    """The module under torch.compile(fullgraph=True, dynamic=False): a graph break or a Dynamo
    error is this case's verdict, with the first line of the error."""
    import torch

    try:
        compiled = torch.compile(cand, fullgraph=True, dynamic=False, backend=compile_backend(device))
        with torch.no_grad():
            out = compiled(*inputs)
        _sync(device)
        return out
    except Exception as exc:
        if is_cuda_error(str(exc)):
            raise
        raise Reject(f"under torch.compile(fullgraph=True) the forward does not compile: {_first_line(exc)}"
                     f"{candidate_frame(exc)}. The model it goes into is compiled whole: {COMPILE_HINT}") from None


def float_args_message(floats) -> str:
    """The compile step's verdict on kernel parameters that take a Python float at runtime."""
    named = ", ".join(f"`{param}` of `{kernel}`" for kernel, param in list(floats)[:4])
    return (f"under torch.compile the kernels would compute in fp64: a Python float is passed at runtime "
            f"to {named}; Triton types it fp32, but Inductor (the kernel inside a compiled model) types "
            "it fp64, which promotes the kernel's float math to fp64 (a compile error for a "
            "loop-carried value, half the speed elsewhere). Declare such a parameter `tl.constexpr` "
            "(eps, scales: one value per model)")


def _graph_call(cand, inputs, fresh, device):
    """The eager forward captured in a CUDA graph on `inputs`, then replayed after `fresh`'s values
    are copied into the captured inputs: the output of the replay."""
    import torch

    try:
        static = [tree_map(lambda t: t.clone(), x) for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                cand(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            out = cand(*static)
        refill(static, fresh)
        graph.replay()
        torch.cuda.synchronize()
        return out, static
    except Exception as exc:
        if is_cuda_error(str(exc)) and "captur" not in str(exc).lower():
            raise
        raise Reject(f"captured in a CUDA graph the forward fails: {_first_line(exc)}{candidate_frame(exc)}. "
                     f"A compiled model replays its decode step as a CUDA graph: {COMPILE_HINT}") from None


def _run_case(spec, cls, shape, dtype, device, job: RunnerJob, item: dict, plan: Plan, case: RunnerCase) -> None:
    """The correctness samples of one case: outputs (and inputs after the call) to files, counted
    in case.written; raises Reject for what this process itself can see is wrong; a failure of the
    compiled or CUDA-graph step goes to case.late."""
    import torch

    inplace = set(getattr(spec.task(), "INPLACE_INPUTS", ()))
    if device.type == "cuda" and dtype == spec.dtypes[0]:
        cand = _build(spec, cls, shape, dtype, device, plan.case_weight_seed(shape, dtype))
        inputs = case_inputs(spec, shape, dtype, device, "fresh", plan.timing_base - 2)
        _call(cand, inputs, device)  # compile/autotune outside the trace
        before = Launches.count
        home, kernels = _profile_kernels(cand, inputs, os.getcwd())
        judge_kernels(home, kernels, item["kernel_names"], Launches.count - before,
                      require_kernel=job.require_kernel, cuda_only=job.cuda_only)
        del cand, inputs
    cand = _build(spec, cls, shape, dtype, device, plan.case_weight_seed(shape, dtype))
    sizes = None
    previous_outputs = []  # kept alive: an output sharing their memory is a cached result
    prev_inputs = None
    primary = dtype == spec.dtypes[0]
    steps = plan.steps(compiled=job.compile_check and primary, graph=job.compile_check and primary
                       and device.type == "cuda")
    for k, (what, seed) in enumerate(steps):
        fresh = case_inputs(spec, shape, dtype, device, what, seed)
        if what in ("compiled", "graph"):
            try:
                if what == "compiled" and Launches.floats:
                    raise Reject(float_args_message(Launches.floats))
                if what == "compiled":
                    out, after = _compiled_call(cand, fresh, device), fresh
                else:
                    first = case_inputs(spec, shape, dtype, device, "fresh", plan.base + 1)
                    out, after = _graph_call(cand, first, fresh, device)
            except Reject as rej:
                case.late = str(rej)
                return
            save_outputs(case_file(item["dir"], shape, dtype, k), out, after)
            case.written += 1
            continue
        if what == "small" and not has_float_input(fresh):
            continue
        if sizes is None:
            sizes = sorted({x.numel() * x.element_size() for x in fresh if isinstance(x, torch.Tensor)})
        if what == "refill" and prev_inputs is not None:
            refill(prev_inputs, fresh)
            inputs = prev_inputs
        else:
            inputs = fresh
        saved = [(i, x.clone()) for i, x in leaves(inputs)]
        scrub_free_memory(device, sizes)
        before = Launches.count
        out = _call(cand, inputs, device)
        launched = Launches.count - before
        flat = flatten(out)
        for path, t in flat:
            if not isinstance(t, torch.Tensor):
                continue
            span = _storage_span(t)
            for i, x in leaves(inputs):
                if i not in inplace and _overlaps(span, _storage_span(x)):
                    raise Reject(f"{path} shares memory with input #{i}: the kernel returns its input or a "
                                 "view of it instead of computing a new tensor")
            for old in previous_outputs:
                if _overlaps(span, _storage_span(old)):
                    raise Reject(f"{path} is the same memory as the output of an earlier call with different "
                                 "inputs: the kernel returns a cached result instead of computing it")
        for (i, x), (_, keep) in zip(leaves(inputs), saved):
            if i not in inplace and not torch.equal(x, keep):
                raise Reject(f"input #{i} was modified in place; the operator must leave its inputs unchanged")
        if device.type == "cpu" and launched == 0 and job.require_kernel:  # on a GPU the profiler decides
            raise Reject("no kernel of the candidate's own ran during forward (no Triton launch): the "
                         "result came from PyTorch ops or the baseline, not from a kernel")
        save_outputs(case_file(item["dir"], shape, dtype, k), out, inputs)
        case.written += 1
        previous_outputs += [t for _, t in flat if isinstance(t, torch.Tensor)]
        if what != "refill":
            prev_inputs = inputs


def pool_size(first) -> int:
    """How many distinct input sets the stopwatch rotates through, given the first: as many as fit
    POOL_BYTES, at most POOL_SETS, at least 2."""
    import torch

    nbytes = sum(x.numel() * x.element_size() for x in first if isinstance(x, torch.Tensor))
    return max(2, min(POOL_SETS, POOL_BYTES // max(nbytes, 1)))


def timing_pool(spec, shape, dtype, device, plan: Plan) -> list[tuple]:
    """The input sets the stopwatch rotates through, at seeds plan.timing_base.. (the referee times
    the baselines on the same ones and rebuilds any of them to check a timed output)."""
    first = case_inputs(spec, shape, dtype, device, "fresh", plan.timing_base)
    return [first] + [case_inputs(spec, shape, dtype, device, "fresh", plan.timing_base + i)
                      for i in range(1, pool_size(first))]


def say(folder: str, word: str, data) -> None:
    """Write one word of the exchange (atomically: the other side never reads half of it)."""
    tmp = os.path.join(folder, f".{word}.{os.getpid()}.{time.monotonic_ns()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, os.path.join(folder, word))


def hear(folder: str, word: str, timeout: float, alive=None):
    """The other side's word (a dict), or None: not said within `timeout` s, `alive()` turned
    False, or unreadable."""
    path = os.path.join(folder, word)
    deadline = time.monotonic() + timeout
    while not os.path.isfile(path):
        if time.monotonic() > deadline or (alive is not None and not alive()):
            return None
        time.sleep(0.02)
    return read_dict(path)


def read_dict(path: str) -> dict | None:
    """A JSON object from a file either side of the exchange may have written (None: absent,
    unreadable or not an object)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stopwatch_counts(device) -> dict:
    """How many calls the stopwatch takes: the unit benchmark's on a GPU; on the host clock (the
    protocol's CPU tests, where the figures mean nothing) a few, since interpreted kernels are slow."""
    return {} if device.type == "cuda" else {"samples": 24, "wall_rounds": 2}


def _time_candidate(spec, cls, shape, dtype, device, plan: Plan) -> tuple[dict, object, list]:
    """The candidate timed alone on the pool; (figures, the module, the pool with each set's last
    output kept)."""
    import torch

    from fastkernels.measure.timing import compare

    cand = _build(spec, cls, shape, dtype, device, plan.case_weight_seed(shape, dtype))
    sets = timing_pool(spec, shape, dtype, device, plan)
    kept: dict = {}
    with torch.no_grad():
        cmp = compare({"candidate": cand}, sets, keep=kept, **stopwatch_counts(device))
    return {**cmp.to_dict(), "sets": len(sets)}, cand, [sets, kept.get("candidate", {})]


def _write_back(spec, shape, dtype, device, folder: str, cand, pool, pick: list, refill_seed: int) -> None:
    """The timed outputs of the input sets the parent picked, and one call on the first set refilled
    in place with values of the parent's new seed."""
    import torch

    sets, outs = pool
    for i in pick:
        if isinstance(i, int) and i in outs:
            save_outputs(timed_file(folder, shape, i), outs[i])
    refill(sets[0], case_inputs(spec, shape, dtype, device, "fresh", int(refill_seed)))
    with torch.no_grad():
        save_outputs(timed_file(folder, shape, -1), cand(*sets[0]))


def run_candidate(job: RunnerJob, item: dict, filename: str, module_name: str) -> dict:
    """One candidate in this process: import, correctness outputs, then (on the parent's word) timing."""
    t0 = time.perf_counter()
    import torch

    from fastkernels.gpu.cuda_build import cached_builds
    from fastkernels.measure import (
        timing as timing_mod,  # captures the timer functions first
    )
    from fastkernels.registry.tasks import load_module

    Launches.install()
    spec = spec_from_dict(job.level, job.name, job.spec)
    plan = Plan(**job.plan)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    result = RunnerResult(device=torch.cuda.get_device_name() if gpu else "cpu")
    path = os.path.join(os.getcwd(), filename)
    with open(path, "w") as fh:
        fh.write(item["code"])
    phases = result.phase_seconds
    phases["setup"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with cached_builds():  # a raw CUDA kernel's load_inline: content-cached, built for this GPU
        module = load_module(path, name=module_name)
    phases["import_candidate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cls = getattr(module, spec.class_name, None)
    if not isinstance(cls, type):
        result.error = f"{item['label']}: the file defines no class {spec.class_name!r}"
        return result.to_dict()
    replaced = timing_mod.replaced_timers()
    if replaced:
        result.error = (f"{item['label']}: importing the kernel replaced timing functions ({', '.join(replaced)}); "
                        "a kernel must not touch the harness")
        return result.to_dict()
    for shape in spec.shapes:
        for dtype in spec.dtypes:
            case = RunnerCase(shape=shape, dtype=dtype)
            try:
                _run_case(spec, cls, shape, dtype, device, job, item, plan, case)
            except Reject as rej:
                case.reject = str(rej)
            result.cases.append(asdict(case))
    phases["outputs"] = time.perf_counter() - t0
    if not ((gpu or job.host_clock) and job.timing):
        return result.to_dict()
    say(item["dir"], READY, {"cases": result.cases})
    go = hear(item["dir"], GO, job.wait_s) or {}
    shapes = [s for s in go.get("time", []) if s in spec.shapes]
    t0 = time.perf_counter()
    Launches.uninstall()
    pools = {}
    for shape in shapes:
        try:
            result.timing[shape], cand, pools[shape] = _time_candidate(spec, cls, shape, spec.dtypes[0], device, plan)
            pools[shape].append(cand)
        except Exception as exc:  # noqa: BLE001 - a shape that fails under timing is that shape's verdict
            if is_cuda_error(str(exc)):
                raise
            result.timing[shape] = {"error": f"raised under timing: {type(exc).__name__}: "
                                             f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    say(item["dir"], TIMED, {"sets": {s: sorted(p[1]) for s, p in pools.items()}})  # the sets with a timed output
    pick = hear(item["dir"], PICK, job.wait_s) or {}
    for shape, (sets, outs, cand) in pools.items():
        try:
            _write_back(spec, shape, spec.dtypes[0], device, item["dir"], cand, (sets, outs),
                        (pick.get("pick") or {}).get(shape, []), int(pick.get("refill_seed", 0)))
        except Exception as exc:  # noqa: BLE001 - as under timing
            if is_cuda_error(str(exc)):
                raise
            result.timing[shape] = {"error": f"raised after timing: {_first_line(exc)}"}
    del pools
    replaced = timing_mod.replaced_timers()
    if replaced:
        result.error = f"{item['label']}: timing functions were replaced while it ran ({', '.join(replaced)})"
    phases["timing"] = time.perf_counter() - t0
    return result.to_dict()


def runner_job(payload: dict) -> dict:
    """Sandbox side of the unit benchmark's candidate run: every item in turn. A candidate that
    raises while importing is its own verdict; one that replaced timing functions ends the batch
    (the rest run in a fresh child)."""
    from fastkernels.measure import timing as timing_mod

    job = RunnerJob.from_dict(payload)
    results = []
    for i, item in enumerate(job.items):
        name = "candidate.py" if len(job.items) == 1 else f"c{i}_candidate.py"
        try:
            results.append(run_candidate(job, item, name, f"fk_candidate_{i}"))
        except Exception as exc:  # noqa: BLE001 - an import that raises is this candidate's verdict
            text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
            if is_cuda_error(text) or len(job.items) == 1:
                raise  # one candidate: the sandbox classifies it; several: the parent reruns the rest alone
            results.append(RunnerResult(error=f"{item['label']}: raised: {text}{candidate_frame(exc)}").to_dict())
        if timing_mod.replaced_timers():
            break
    return {"results": results}
