"""What the agent asks the LLM, and how it reads the answer.

(Over 500 lines on purpose: most of it is the prompt's own text, kept in one place to read whole.)

`build_generation_prompt(op, cuda_only)` asks for a fast kernel file for one operator: the
baseline task file as it is, the class and signatures to keep, the inputs it will see (shapes,
dtypes), the GPU and its ceilings with the roofline floor of every shape, guidance for what bounds
the operator, the rules of the chosen path (Triton, or raw CUDA through `load_inline`), an
exemplar kernel when there is one, and the reply format. `build_retry_prompt` adds the failed code
and its error. Either takes a steering note from the person watching ("use a persistent grid").

`extract_code(reply)` takes the kernel file out of a reply; `CodeExtractionError` (a message fit to
send back to the LLM) when there is none.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fastkernels.judge.validate import parse
from fastkernels.rules.secrets import scrub

if TYPE_CHECKING:
    from fastkernels.registry.tasks import OperatorSpec


@dataclass(frozen=True)
class Prompt:
    system: str
    user: str
    cuda_only: bool = False  # which path it asks for (the library backend serves the matching kernel)

    @property
    def text(self) -> str:
        """Both parts as one markdown document (what tracking logs)."""
        return f"# system\n\n{self.system}\n\n# user\n\n{self.user}"

    def __str__(self) -> str:
        return self.text


class CodeExtractionError(ValueError):
    """The reply holds no usable code. The message is written to be sent back to the LLM."""


# ---- the device the kernel will run on -------------------------------------------------------------


@dataclass(frozen=True)
class AssumedDevice:
    """The ceilings the prompt quotes when the real device is unknown (prompts are built on the
    machine that runs the agent, which may have no GPU): the H100 SXM datasheet."""

    name: str = "NVIDIA H100 80GB HBM3 (SXM, sm_90, 132 SMs, 50 MB L2)"
    copy_bandwidth: float = 3.35e12  # bytes/s, HBM3 peak; a device-to-device copy reaches ~3.0e12
    bf16_flops: float = 989e12  # FLOP/s, dense bf16 tensor cores
    measured: bool = False


DEFAULT_DEVICE = AssumedDevice()


def _ceilings(device: Any) -> tuple[str, float, float, str]:
    """(name, bytes/s, bf16 FLOP/s, provenance) of the device: the dict that
    bench.roofline.device_ceilings() returns, or an object with `name`, `copy_bandwidth` (bytes/s),
    `bf16_flops` (FLOP/s) and optionally `measured: bool`."""
    if device is None:
        device = DEFAULT_DEVICE
    if isinstance(device, dict):  # bench.roofline.device_ceilings(): measured on this GPU
        device = AssumedDevice(name=str(device.get("gpu") or "unknown GPU"),
                               copy_bandwidth=float(device.get("copy_bytes_per_s") or 0),
                               bf16_flops=float(device.get("bf16_flops_per_s") or 0), measured=True)
    name = str(getattr(device, "name", "unknown GPU"))
    bw = float(getattr(device, "copy_bandwidth", 0) or 0)
    flops = float(getattr(device, "bf16_flops", 0) or 0)
    if device is DEFAULT_DEVICE or (not bw and not flops):
        d = DEFAULT_DEVICE
        return d.name, d.copy_bandwidth, d.bf16_flops, "assumed: the actual GPU is unknown here; H100 SXM datasheet figures"
    measured = getattr(device, "measured", True)
    return name, bw or DEFAULT_DEVICE.copy_bandwidth, flops or DEFAULT_DEVICE.bf16_flops, (
        "measured on this GPU" if measured else "datasheet figures")


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _fmt_seconds(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e9:.0f} ns"


# A kernel launch plus its completion costs ~2-4 us on an H100 however little it does.
LAUNCH_FLOOR_S = 2e-6


# ---- what the prompt says about the operator ------------------------------------------------------


def _def_header(source: str, fn: ast.FunctionDef) -> str:
    """A method's `def` line(s) as written in the file, body elided."""
    src = source.splitlines()
    text = "\n".join(src[fn.lineno - 1 : fn.body[0].lineno - 1]) if fn.body[0].lineno > fn.lineno else ""
    if fn.decorator_list or not text.strip().endswith(":"):
        ret = f" -> {ast.unparse(fn.returns)}" if fn.returns else ""
        return f"    def {fn.name}({ast.unparse(fn.args)}){ret}: ..."
    first = src[fn.lineno - 1]
    indent = len(first) - len(first.lstrip())
    return textwrap.indent(textwrap.dedent(text), " " * 4).rstrip() + " ..." if indent else text + " ..."


def _signature(source: str, class_name: str) -> tuple[str, list[str]]:
    """The class line, the __init__ and forward signatures as written in the baseline, and the names
    of the parameters/submodules/buffers __init__ creates (the state-dict names a candidate keeps)."""
    try:
        tree = parse(source)
    except SyntaxError:
        return f"class {class_name}(nn.Module): ...", []
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        return f"class {class_name}(nn.Module): ...", []
    bases = ", ".join(ast.unparse(b) for b in cls.bases)
    lines = [f"class {class_name}({bases}):"]
    state: list[str] = []
    for fn in cls.body:
        if not isinstance(fn, ast.FunctionDef) or fn.name not in ("__init__", "forward"):
            continue
        lines.append(_def_header(source, fn))
        if fn.name != "__init__":
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                call = ast.unparse(node.value.func)
                if not re.search(r"(^|\.)(nn\.\w+|Parameter|Linear|Embedding|ModuleList|ModuleDict)$", call):
                    if not re.match(r"^[A-Z]\w*$", call):  # a submodule class defined in the file
                        continue
                for t in node.targets:
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        state.append(t.attr)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "register_buffer" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                state.append(node.args[0].value)
    return "\n".join(lines), list(dict.fromkeys(state))


def _describe(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        dt = str(value.dtype).removeprefix("torch.")
        return f"{dt}[{', '.join(str(d) for d in value.shape)}]"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value[:4])
        more = f", ... ({len(value)} items)" if len(value) > 4 else ""
        return f"{type(value).__name__}[{inner}{more}]"
    if value is None:
        return "None"
    return type(value).__name__ + (f" = {value!r}" if isinstance(value, (int, float, bool)) else "")


@lru_cache(maxsize=256)
def _io_lines(level: int, name: str, model_id: str, tiny: bool, shape_name: str, shape_key: str, dtype: str) -> str:
    """'inputs -> outputs' of one shape, from the task's own make_inputs and the baseline forward
    run on fake tensors (no memory, no compute). Raises when the task cannot be traced that way
    (data-dependent control flow, as in MoE routing); the caller then shows the dims alone."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastkernels.models.catalog import resolve
    from fastkernels.registry.tasks import dtype_of, load_task

    task = load_task(level, name)
    config = resolve(model_id, tiny).hf_config()
    shape = json.loads(shape_key)
    init = {**task.init_args(config), **shape.get("init", {})}
    torch_dtype = dtype_of(dtype)
    with FakeTensorMode(allow_non_fake_inputs=True):
        gen = torch.Generator(device="cpu").manual_seed(0)
        inputs = task.make_inputs(config, shape, torch_dtype, "cpu", gen)
        module = getattr(task, task.CLASS_NAME)(**init)
        for p in list(module.parameters()) + list(module.buffers()):
            if p.is_floating_point():
                p.data = p.data.to(torch_dtype)
        with torch.no_grad():
            out = module(*inputs)
    ins = ", ".join(_describe(v) for v in inputs)
    outs = _describe(out) if not isinstance(out, tuple) else "(" + ", ".join(_describe(v) for v in out) + ")"
    return f"forward({ins}) -> {outs}"


def _shape_section(op: "OperatorSpec", device: Any) -> str:
    name, bw, flops, _ = _ceilings(device)
    lines = []
    try:
        from fastkernels.models.catalog import resolve
        from fastkernels.registry.tasks import dtype_of

        config = resolve(op.model_id, op.tiny).hf_config()
        task = op.task()
    except Exception:  # the prompt still works from the dims alone
        config = task = None
    for shape_name, shape in op.shapes.items():
        dims = ", ".join(f"{k}={v}" for k, v in shape.items() if k != "init")
        init = shape.get("init")
        extra = f"; constructed with {init}" if init else ""
        lines.append(f"- `{shape_name}`: {dims}{extra}")
        for dtype in op.dtypes:
            detail = []
            try:
                io = _io_lines(op.level, op.name, op.model_id, op.tiny, shape_name,
                               json.dumps(shape, sort_keys=True), dtype)
                detail.append(io)
            except Exception:
                pass
            if task is not None:
                try:
                    c = task.cost(config, shape, dtype_of(dtype))
                    t_mem, t_fl = c["bytes"] / bw, c["flops"] / flops
                    bound = "memory" if t_mem >= t_fl else "compute"
                    floor = max(t_mem, t_fl)
                    note = (f"{bound}-bound at these ceilings" if floor >= LAUNCH_FLOOR_S else
                            "below the cost of one kernel launch: launch overhead is the whole game")
                    detail.append(f"moves at least {_fmt_bytes(c['bytes'])}, {c['flops']:.3g} FLOP; roofline floor "
                                  f"{_fmt_seconds(floor)} ({note})")
                except Exception:
                    pass
            if detail:
                lines.append(f"  - {dtype}: " + "; ".join(detail))
    return "\n".join(lines)


MEMORY_GUIDANCE = """\
This operator is memory-bound: its time is bytes moved / bandwidth. Aim at the roofline floor above.
- One pass: read every input once and write every output once; keep intermediates in registers
  (a whole row fits: reduce and rescale without re-reading global memory).
- Fuse everything the baseline does in separate kernels (it launches one per torch op) into one.
- Vectorised, coalesced loads: contiguous 16-byte accesses (8 bf16 per thread), unit-stride rows.
- Accumulate reductions in fp32 and round to the output dtype where the baseline does.
- Size the grid to fill 132 SMs; pack several short rows per program instead of launching
  thousands of tiny programs.
- Decode shapes are tiny (a few rows): launch overhead dominates, so one kernel, no host syncs,
  no .item(), no allocations beyond the outputs."""

COMPUTE_GUIDANCE = """\
This operator is compute-bound at its large shapes: its time is FLOPs / tensor-core throughput.
- Run the matrix products on tensor cores (tl.dot in Triton; mma/wgmma/WMMA in CUDA) with bf16
  operands and fp32 accumulators; tile so each operand is loaded from global memory once per tile.
- Block sizes multiples of 64/128, software pipelining (num_stages), swizzled tile order for L2 reuse.
- Fuse the elementwise work around the products (scaling, masking, softmax, activation, residual)
  into the same kernel so intermediates never reach global memory.
- Decode shapes (one new token) are memory-bound even here: read K/V or weights once, split the
  long dimension across programs (split-K / flash-decoding) so every SM has work."""

TRITON_RULES = """\
Write Triton kernels (`@triton.jit`, triton 3.x) launched from `forward`.
- Every launch is a PyTorch operator, so the user's model compiles with torch.compile(fullgraph=True)
  and its decode step replays as a CUDA graph: wrap the function that allocates the outputs and
  launches in `@torch.library.custom_op(f"{__name__.replace('.', '_')}::<name>", mutates_args=())`
  (type-annotated tensors and scalars; it returns new tensors) and give it `@<op>.register_fake`
  returning empty outputs of the right shape, dtype and device (or use `torch.library.triton_op` with
  `torch.library.wrap_triton(kernel)[grid](...)` inside). `forward` calls the operator; no host syncs
  (.item(), .tolist(), .cpu()) anywhere on the forward path. The gate runs your module under
  torch.compile(fullgraph=True) and, on a GPU, captured in a CUDA graph: a graph break fails it.
- Kernels take tensors and strides; mark block sizes `tl.constexpr`; mask every load and store.
- A float scalar (eps, a softmax scale) is a `tl.constexpr` parameter: passed at runtime,
  Inductor types it fp64 inside a compiled model and the kernel's math turns fp64 (the gate
  fails such a launch).
- Launch on the current stream (the default for Triton); never create streams.
- Work for both dtypes listed; upcast to fp32 before arithmetic (bf16 arithmetic with a Python
  scalar also fails in the Triton interpreter, which the CPU tests use: TRITON_INTERPRET=1).
- Where a product of large matrices remains, you may keep it on torch (cuBLAS) if you cannot beat
  it, and fuse everything around it."""

CUDA_RULES = """\
--cuda-only: write raw CUDA C++ compiled with `torch.utils.cpp_extension.load_inline`.
- Do not import triton. Compile once at import time and keep the module at module level:
  `_ext = load_inline(name="fk_<op>", cpp_sources=CPP_SRC, cuda_sources=CUDA_SRC, functions=[...],
  extra_cuda_cflags=["-O3"], verbose=False)`. Do not pass build_directory or arch flags: the harness
  caches every build by its content (the same source never compiles twice) and builds for this
  GPU's own architecture (sm_90a on an H100: wgmma and setmaxnreg are available).
- Keep CUDA_SRC to the CUDA headers (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h): kernels plus a
  launcher on raw pointers that takes a cudaStream_t and returns cudaGetLastError(). Do the tensor
  side in CPP_SRC (`#include <torch/extension.h>`, <c10/cuda/CUDAStream.h>, <c10/cuda/CUDAGuard.h>,
  <c10/cuda/CUDAException.h>): checks, `at::empty_like` outputs, then call the launcher with
  `c10::cuda::getCurrentCUDAStream().stream()` and wrap it in C10_CUDA_CHECK. Do not include
  ATen/cuda/CUDAContext.h (it pulls in cuBLAS/cuSPARSE headers a toolkit may lack).
- torch builds with __CUDA_NO_BFLOAT16_CONVERSIONS__ and __CUDA_NO_HALF_CONVERSIONS__: convert
  explicitly (__bfloat162float, __float2bfloat16, __half2float, __float2half); accumulate in float.
- `forward` may only check/reshape inputs (`.view`, `.reshape`, `.contiguous()`), allocate outputs
  (`torch.empty`, `torch.empty_like`, `torch.zeros`) and call your compiled functions. No PyTorch
  compute in forward: no torch.* / F.* math, no tensor math methods (`.sum`, `.to`, `.float()`,
  `@`, ...). A profiler checks that only your kernels ran.
- Launch on the current stream; never create streams. Dispatch on the input dtype for every dtype
  listed. A build error comes back as the compiler's first errors with lines of your file."""

OUTPUT_FORMAT = """\
Reply with ONE fenced ```python block holding the complete file: imports, kernels, helpers and the
class. A few sentences of reasoning before the block are fine; nothing after it. Do not include the
harness metadata (CLASS_NAME, FAMILIES, init_args, shapes, make_inputs, cost): only the module."""


def _guidance(op: "OperatorSpec") -> str:
    """Guidance for what bounds the op; both kinds when its shapes differ (attention: prefill
    compute-bound, decode memory-bound)."""
    bounds = {op.bound} | {s["bound"] for s in op.shapes.values() if s.get("bound") in ("memory", "compute")}
    if bounds == {"compute", "memory"}:
        return COMPUTE_GUIDANCE + "\n\n" + MEMORY_GUIDANCE.replace("This operator is memory-bound",
                                                                 "At its memory-bound shapes")
    return COMPUTE_GUIDANCE if "compute" in bounds else MEMORY_GUIDANCE


def build_system_prompt(cuda_only: bool) -> str:
    path = "raw CUDA (through torch.utils.cpp_extension.load_inline)" if cuda_only else "Triton"
    return textwrap.dedent(f"""\
        You are an expert GPU kernel engineer. You rewrite the operators of Hugging Face LLMs
        (PyTorch modules) as fast GPU kernels written in {path}, for inference on NVIDIA GPUs.

        How your file is judged:
        1. It must define the baseline's class, with the same name, constructor signature, forward
           signature and parameter names: weights move between baseline and yours by
           load_state_dict, in both directions.
        2. Correctness: outputs are compared with the baseline in fp32 on several fresh random inputs
           and weights of each shape and dtype: the error may be at most a few times the baseline's
           own rounding error (at the worst element, in RMS and in mean); a NaN never passes.
           Outputs must not alias inputs; every call must compute from its inputs (no caching).
           Also under torch.compile(fullgraph=True) (and, on a GPU, in a captured CUDA graph).
        3. Speed: device time and wall time per call with the L2 flushed, against the baseline eager
           and under torch.compile, and as a fraction of the device's roofline.
        Never import fastkernels, never load or call the baseline, never use another CUDA stream,
        never inspect frames, the module table or the garbage collector, never assign into other
        modules. Untrusted code runs in a sandbox: a crash or a hang costs you the attempt.""")


def build_generation_prompt(op: "OperatorSpec", cuda_only: bool = False, *, steering: str | None = None,
                            device: Any = None, example: str | None = None) -> Prompt:
    """The prompt for a first attempt at `op`. `device` is the dict of bench.roofline.device_ceilings()
    or an object with name, copy_bandwidth (bytes/s), bf16_flops (FLOP/s); None -> H100 datasheet
    figures, labelled as assumed.
    `example` is a kernel file to show as an exemplar of the expected structure (Triton path)."""
    return Prompt(build_system_prompt(cuda_only), _user_prompt(op, cuda_only, steering, device, example),
                  cuda_only=cuda_only)


def _user_prompt(op: "OperatorSpec", cuda_only: bool, steering: str | None, device: Any,
                 example: str | None) -> str:
    from fastkernels.registry.tasks import LEVEL_NAMES

    dev_name, bw, flops, provenance = _ceilings(device)
    signature, state = _signature(op.source_code, op.class_name)
    rel_path = f"tasks/baseline/L{op.level}/{op.name}.py"
    init_args = ", ".join(f"{k}={v!r}" for k, v in op.init_args.items()) or "(none)"
    parts = [
        f"# Task: a fast kernel for `{op.class_name}` ({op.name}, level {op.level}: "
        f"{LEVEL_NAMES.get(op.level, '')})",
        f"Model: {op.model_id} (family {op.family}); it stands for the HF `{op.stands_for}`.",
        f"## The baseline task file ({rel_path}), as it is\n\n```python\n{op.source_code.rstrip()}\n```",
        "The part under the `task metadata` comment is read by the harness (how it builds the module "
        "and draws inputs); your file only needs the module.",
        "## The contract to keep\n\n```python\n" + signature + "\n```\n"
        + f"Class name: `{op.class_name}` exactly. Constructor arguments it receives: {init_args}."
        + (f"\nKeep these parameter/submodule names (state-dict keys): {', '.join(f'`{s}`' for s in state)}."
           if state else ""),
        f"## Inputs it will see (dtypes: {', '.join(op.dtypes)})\n\n{_shape_section(op, device)}",
        f"## The GPU\n\n{dev_name}: copy bandwidth {bw / 1e12:.2f} TB/s, bf16 tensor cores "
        f"{flops / 1e12:.0f} TFLOP/s ({provenance}).",
        "## Performance guidance\n\n" + _guidance(op),
        "## Rules of the path\n\n" + (CUDA_RULES if cuda_only else TRITON_RULES),
    ]
    if example and example.strip():
        parts.append("## An exemplar\n\nA verified kernel file from this project's library (its structure, "
                     "launch heuristics and comments are the expected style; if it is for this operator, "
                     f"beat it):\n\n```python\n{example.rstrip()}\n```")
    if steering and steering.strip():
        parts.append(f"## Note from the engineer reviewing your work (follow it)\n\n{steering.strip()}")
    parts.append("## Reply format\n\n" + OUTPUT_FORMAT)
    return "\n\n".join(parts) + "\n"


STYLE_EXEMPLAR = (1, "rms_norm")  # the library kernel that shows the house style when an op has none


def library_example(op: "OperatorSpec", cuda_only: bool = False) -> str | None:
    """An exemplar for `example=`: the op's own library kernel, else the library RMSNorm (structure,
    launch heuristics, comments with numbers). None for --cuda-only, where a Triton file would
    mislead, and when the library has neither."""
    if cuda_only:
        return None
    from fastkernels.registry.tasks import kernel_source, library_dir

    for level, name in ((op.level, op.name), STYLE_EXEMPLAR):
        path = library_dir(level) / f"{name}.py"
        if path.is_file():
            return kernel_source(path)
    return None


MAX_ERROR_CHARS = 8000


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Keep the head and the tail of a long error (a compiler log's first error and the traceback's
    last frames are what matter)."""
    if len(text) <= limit:
        return text
    head, tail = limit // 4, limit - limit // 4
    return f"{text[:head]}\n[... {len(text) - limit} characters cut ...]\n{text[-tail:]}"


def build_retry_prompt(op: "OperatorSpec", code: str | None, error: str, *, cuda_only: bool = False,
                       steering: str | None = None, device: Any = None, attempt: int | None = None,
                       example: str | None = None) -> Prompt:
    """The prompt for another attempt: the generation prompt plus the failed code and its error.
    `attempt` is the number of the attempt about to run (the failed one is attempt - 1)."""
    user = _user_prompt(op, cuda_only, steering, device, example)
    failed = f"attempt {attempt - 1}" if attempt and attempt > 1 else "the previous attempt"
    retry = [f"## Your previous file ({failed}) failed"]
    if code and code.strip():
        retry.append(f"```python\n{code.rstrip()}\n```")
    else:
        retry.append("(no code could be taken from that reply)")
    retry.append(f"### The error\n\n```\n{_clip(scrub(error.strip()))}\n```")  # nothing secret goes out
    retry.append(
        "Find the cause and return the complete corrected file (same format as above). A compile or "
        "import error: fix that line. A numerical mismatch: check masking of the last block, fp32 "
        "accumulation, the rounding points the baseline has, broadcasting and strides. A crash or an "
        "illegal memory access: check index arithmetic (int64 for large offsets) and masks. A kernel "
        "slower than the baseline: fewer launches, fewer bytes, more parallelism.")
    return Prompt(build_system_prompt(cuda_only), user + "\n" + "\n\n".join(retry) + "\n", cuda_only=cuda_only)


# ---- reading the reply --------------------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`]*)[^`]*$")
PYTHON_LANGS = {"", "python", "py", "python3", "py3", "pycon", "ipython"}


def _blocks(reply: str) -> list[tuple[str, str, bool]]:
    """Fenced blocks of a markdown reply: (language, code, closed). An unclosed last fence (a reply
    cut off at the token limit) runs to the end of the reply."""
    out = []
    lines = reply.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, indent = m.group("fence"), m.group("lang").lower(), m.group("indent")
        body, j, closed = [], i + 1, False
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and stripped.rstrip(fence[0]) == "":
                closed = True
                break
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        out.append((lang, textwrap.dedent("\n".join(body)), closed))
        i = j + 1
    return out


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
    return names


def _used_names(tree: ast.Module) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _parse(code: str) -> ast.Module | None:
    try:
        return parse(code)
    except SyntaxError:
        return None


def _defines_class(code: str, class_name: str | None) -> bool:
    if class_name:
        return re.search(rf"^class\s+{re.escape(class_name)}\b", code, re.M) is not None
    return re.search(r"^class\s+\w+\s*\(.*Module.*\)\s*:", code, re.M) is not None


NO_CODE = ("Your reply contained no code. Answer with the complete file (imports, kernels and the class) "
           "in a single ```python fenced block.")


def extract_code(reply: str, class_name: str | None = None) -> str:
    """The kernel file in an LLM reply.

    The fenced Python (or unlabelled) block that defines the class (`class_name`, else any
    nn.Module subclass) wins; the last one if the reply revised itself. If that block uses names
    that only earlier Python blocks define (kernels in one block, the class in the next), those
    blocks are joined in order. With no class anywhere, the largest Python block is returned (the
    validator then says what is missing). A reply with no fences that parses as Python with a
    class is taken whole. Raises CodeExtractionError when there is no code at all."""
    if not reply or not reply.strip():
        raise CodeExtractionError("Your reply was empty. " + NO_CODE.split(". ", 1)[1])
    blocks = [(code, closed) for lang, code, closed in _blocks(reply) if lang in PYTHON_LANGS and code.strip()]
    if not blocks:
        other = [lang for lang, code, _ in _blocks(reply) if code.strip()]
        stripped = reply.strip()
        if not other and _parse(stripped) is not None and re.search(r"^(class|def|import|from)\s", stripped, re.M):
            return stripped + "\n"
        if other:
            raise CodeExtractionError(
                f"Your reply had code only in {', '.join(sorted(set(other)))} blocks and no Python block. "
                "Return ONE ```python block with the complete file (CUDA sources go in Python strings "
                "passed to load_inline).")
        raise CodeExtractionError(NO_CODE)
    codes = [c for c, _ in blocks]
    with_class = [i for i, c in enumerate(codes) if _defines_class(c, class_name)]
    if not with_class:
        return max(codes, key=len).rstrip() + "\n"
    pick = with_class[-1]
    chosen = codes[pick]
    tree = _parse(chosen)
    if tree is not None and pick > 0:
        missing = _used_names(tree) - _defined_names(tree)
        helpers = []
        for c in codes[:pick]:
            t = _parse(c)
            if t is not None and _defined_names(t) & missing and not _defines_class(c, class_name):
                helpers.append(c)
        if helpers:
            chosen = "\n\n\n".join(c.rstrip() for c in [*helpers, chosen])
    return chosen.rstrip() + "\n"
