"""The first gate a kernel passes: does the code parse, define the class, import and construct?

`validate_kernel(code, expected_class_name)` never executes the code in the caller's process.
Static checks read the syntax tree (syntax, the class, forbidden constructs); then a sandboxed child
writes the code to a file, imports it, finds the class and runs `__init__` with the task's init
args. Every error is one paragraph an LLM can act on: what is wrong, where (line), what to do.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import asdict, dataclass

STAGES = ("syntax", "static", "import", "class", "init")
CUDA_BUILD_TIMEOUT = 600.0  # seconds for a validation that compiles CUDA (fastkernels.gpu.cuda_build)
STAGE_MARK = "[fastkernels-validate] stage="

# Calls a --cuda-only forward may make on the torch namespace: allocation and metadata, no math.
TORCH_ALLOWED = {
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "device", "dtype", "Size",
    "is_tensor", "is_floating_point", "numel", "get_default_dtype", "finfo", "iinfo",
    "current_stream", "current_device", "get_device_properties", "device_count", "is_available",
    "synchronize", "no_grad", "inference_mode",
}
# Tensor methods that are compute (a framework kernel) rather than metadata or allocation.
TENSOR_COMPUTE_METHODS = {
    "matmul", "mm", "bmm", "addmm", "baddbmm", "mv", "dot", "einsum", "softmax", "log_softmax",
    "sum", "mean", "var", "std", "norm", "pow", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh",
    "relu", "gelu", "silu", "mul", "add", "sub", "div", "mul_", "add_", "sub_", "div_", "neg",
    "abs", "square", "max", "min", "amax", "amin", "argmax", "topk", "sort", "cumsum", "prod",
    "clamp", "where", "masked_fill", "masked_fill_", "gather", "scatter", "scatter_add",
    "index_select", "index_add", "repeat_interleave", "float", "half", "bfloat16", "double",
    "type_as", "to", "copy_", "lerp", "addcmul", "baddbmm_", "outer", "cos", "sin", "reciprocal",
}
STREAM_CALLS = {"Stream", "stream", "set_stream", "ExternalStream"}
# What no kernel needs, and what reaches into the process that runs it (the harness, the callers'
# frames, other modules' objects): modules, their members, and attribute names.
HARNESS_MODULES = {"gc": "the garbage collector's view of every object",
                   "inspect": "call-stack and frame inspection",
                   "importlib": "the import system (other modules' objects)",
                   "builtins": "the interpreter's builtins",
                   "pkgutil": "the import system (pkgutil.resolve_name reaches any module's objects)",
                   "ctypes": "raw memory access"}
HARNESS_MEMBERS = {"sys.modules": "every loaded module, the harness's included",
                   "sys._getframe": "the callers' frames", "sys.settrace": "tracing the caller",
                   "sys.setprofile": "tracing the caller", "sys.meta_path": "the import system",
                   "sys.path_hooks": "the import system", "sys._current_frames": "other threads' frames",
                   "traceback.extract_stack": "the call stack", "traceback.walk_stack": "the call stack",
                   "traceback.print_stack": "the call stack", "traceback.format_stack": "the call stack",
                   "threading.settrace": "tracing the caller", "threading.setprofile": "tracing the caller"}
HARNESS_NAMES = {"__import__": "the import system", "__builtins__": "the interpreter's builtins",
                 "__subclasses__": "every class in the process", "__globals__": "another function's module",
                 "f_back": "the caller's frame", "f_locals": "a frame's variables", "f_globals": "a frame's module",
                 "tb_frame": "a traceback's frames", "gi_frame": "a generator's frame", "cr_frame": "a coroutine's frame",
                 "__dict__": "another object's namespace", "__setattr__": "another object's attributes",
                 "__delattr__": "another object's attributes"}


@dataclass
class ValidationResult:
    """ok: the kernel passed every stage. stage: where it failed (None when ok); line: the line of
    the candidate file it points at, when known; error: the text to show the user or the LLM."""

    ok: bool
    error: str = ""
    stage: str | None = None
    line: int | None = None
    kind: str = "ok"  # the sandbox job's kind when the child failed ("timeout", "crash", ...)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ValidationResult":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_PARSE_LOCK = threading.Lock()


def parse(code: str) -> ast.Module:
    """ast.parse, one thread at a time: CPython 3.11's AST conversion keeps its recursion depth in
    shared state, and two threads parsing at once can fail with "SystemError: AST constructor
    recursion depth mismatch" (the agent and the benchmarks judge candidates from thread pools)."""
    with _PARSE_LOCK:
        return ast.parse(code)


def _fail(stage: str, error: str, line: int | None = None) -> ValidationResult:
    return ValidationResult(False, error=error, stage=stage, line=line, kind="static")


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to torch modules: {"torch": "torch", "F": "torch.nn.functional", ...}."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _reachable_functions(tree: ast.Module, cls: ast.ClassDef) -> list[ast.FunctionDef]:
    """forward, plus the methods of the class and module-level functions it calls (transitively),
    skipping @triton.jit kernels (their bodies are the kernel, not framework calls)."""
    methods = {f.name: f for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    functions = {f.name: f for f in tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "forward" not in methods:
        return []
    seen, todo, out = set(), [("m", "forward")], []
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        fn = methods.get(key[1]) if key[0] == "m" else functions.get(key[1])
        if fn is None or _is_kernel(fn):
            continue
        out.append(fn)
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in functions:
                    todo.append(("f", f.id))
                elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self"
                      and f.attr in methods):
                    todo.append(("m", f.attr))
    return out


def _is_kernel(fn: ast.FunctionDef) -> bool:
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        name = _dotted(target) or ""
        if name.split(".")[-1] in ("jit", "autotune", "heuristics"):
            return True
    return False


def _reaches_out(tree: ast.Module, aliases: dict[str, str]) -> ValidationResult | None:
    """A kernel that inspects frames, walks the heap or the module table, or rebinds another
    module's attributes: nothing an operator needs, and how a candidate would reach what judges it."""
    def fail(node, what: str, why: str) -> ValidationResult:
        return _fail("static", f"line {node.lineno}: {what} reaches {why}; a kernel computes its outputs from its "
                     "inputs and must not inspect or change the process around it. Remove it.", node.lineno)

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                mods = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            for mod in mods:
                if mod.split(".")[0] in HARNESS_MODULES:
                    return fail(node, f"importing {mod!r}", HARNESS_MODULES[mod.split(".")[0]])
                if mod in HARNESS_MEMBERS:
                    return fail(node, f"importing {mod!r}", HARNESS_MEMBERS[mod])
        elif isinstance(node, ast.Attribute) and node.attr in HARNESS_NAMES:
            return fail(node, f"`.{node.attr}`", HARNESS_NAMES[node.attr])
        elif isinstance(node, ast.Name) and node.id in HARNESS_NAMES:
            return fail(node, f"`{node.id}`", HARNESS_NAMES[node.id])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in HARNESS_NAMES:
            return fail(node, f"the string {node.value!r}", HARNESS_NAMES[node.value])
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name:
                head, *rest = name.split(".")
                full = ".".join([aliases.get(head, head), *rest])
                for member, why in HARNESS_MEMBERS.items():
                    if full == member or full.startswith(member + "."):
                        return fail(node, f"`{name}`", why)
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for target in targets:
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.ctx, (ast.Store, ast.Del)):
                    root = _dotted(t)
                    if root and root.split(".")[0] in aliases:
                        return fail(node, f"assigning `{root}`", "into an imported module or its objects")
        if isinstance(node, ast.Call):
            fname = _dotted(node.func) or ""
            if fname == "vars" and node.args:
                return fail(node, "`vars(...)`", "another object's namespace")
            if fname in ("exec", "eval", "compile"):
                return fail(node, f"`{fname}(...)`", "code no one can read before it runs (write it out instead)")
            if fname in ("setattr", "delattr") and node.args:
                obj = _dotted(node.args[0])
                if obj is None or obj.split(".")[0] != "self":
                    return fail(node, f"`{fname}({ast.unparse(node.args[0])}, ...)`",
                                "into another object's attributes (set your own module's state with self.x = ...)")
    return None


def static_check(code: str, expected_class_name: str, *, cuda_only: bool = False) -> ValidationResult | None:
    """The checks that need no execution. Returns the failure, or None when the code passes."""
    try:
        tree = parse(code)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        text = (exc.text or "").rstrip()
        shown = f": `{text.strip()}`" if text.strip() else ""
        return _fail("syntax", f"SyntaxError at {where}: {exc.msg}{shown}. Fix the syntax; return the whole file.",
                     exc.lineno)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    cls = next((c for c in classes if c.name == expected_class_name), None)
    if cls is None:
        nested = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == expected_class_name]
        found = ", ".join(c.name for c in classes) or "none"
        where = " (it is nested inside another block; define it at module level)" if nested else ""
        return _fail("class", f"no top-level class named {expected_class_name!r}{where}; classes defined: {found}. "
                     f"The file must define `class {expected_class_name}(nn.Module)` with the baseline's "
                     "constructor and forward signature.")
    methods = {f.name for f in cls.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "forward" not in methods:
        return _fail("class", f"class {expected_class_name!r} (line {cls.lineno}) has no forward method; "
                     "define forward with the baseline's signature.", cls.lineno)
    aliases = _aliases(tree)
    reach = _reaches_out(tree, aliases)
    if reach is not None:
        return reach
    # Always: kernels run on the caller's stream (a side stream hides work from the timer), and the
    # harness and baseline are out of bounds (calling the baseline is not a kernel).
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in ("fastkernels", "fastkernels_tui"):
                    return _fail("static", f"line {node.lineno}: imports {mod!r}; a kernel must not use the "
                                 "harness or call the baseline. Implement the operator yourself.", node.lineno)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "tasks/baseline" in node.value:
            return _fail("static", f"line {node.lineno}: refers to the baseline task files; a kernel must not "
                         "load or call the baseline. Implement the operator yourself.", node.lineno)
        if isinstance(node, ast.Call):
            name = _dotted(node.func) or ""
            parts = name.split(".")
            if (len(parts) >= 2 and parts[-1] in STREAM_CALLS
                    and aliases.get(parts[0], parts[0]).split(".")[0] == "torch"):
                return _fail("static", f"line {node.lineno}: `{name}(...)` uses a separate CUDA stream; launch "
                             "every kernel on the caller's current stream (work on another stream escapes "
                             "synchronisation and timing).", node.lineno)
    if not cuda_only:
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] == "triton" for m in mods):
                return _fail("static", f"line {node.lineno}: imports triton, but --cuda-only asks for raw CUDA "
                             "kernels (torch.utils.cpp_extension.load_inline). Remove Triton and write the "
                             "kernel in CUDA C++.", node.lineno)
    for fn in _reachable_functions(tree, cls):
        for node in ast.walk(fn):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
                return _fail("static", f"line {node.lineno}: `@` (matmul) in {fn.name}() runs a framework "
                             "kernel; with --cuda-only every compute op must be your CUDA kernel.", node.lineno)
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name:
                head, *rest = name.split(".")
                full = ".".join([aliases.get(head, head), *rest])
                leaf = full.rsplit(".", 1)[-1]
                framework = (full.startswith(("torch.nn.functional.", "torch.special.", "torch.linalg.", "torch.fft."))
                             or (full.startswith("torch.") and full.count(".") == 1 and leaf not in TORCH_ALLOWED))
                if framework:
                    return _fail("static", f"line {node.lineno}: `{name}(...)` in {fn.name}() is a PyTorch "
                                 "compute op; with --cuda-only the computation must happen in your CUDA "
                                 "kernel (only allocation such as torch.empty_like is allowed).", node.lineno)
            if isinstance(node.func, ast.Attribute) and node.func.attr in TENSOR_COMPUTE_METHODS:
                base = _dotted(node.func.value)
                # A method on a tensor (a local, self.weight, an expression), not on an imported module
                # such as math or the torch namespace (handled above).
                if base is None or base.split(".")[0] not in aliases:
                    return _fail("static", f"line {node.lineno}: `.{node.func.attr}(...)` in {fn.name}() is a "
                                 "PyTorch tensor compute op; with --cuda-only do this inside your CUDA kernel.",
                                 node.lineno)
    return None


def _candidate_line(stderr_tail: str, filename: str) -> int | None:
    hits = re.findall(rf'File "[^"]*{re.escape(filename)}", line (\d+)', stderr_tail)
    return int(hits[-1]) if hits else None


def _validate_in_child(payload: dict) -> dict:
    """Sandbox side: import the candidate from a file in the job's working directory and build it."""
    import os
    import sys
    from pathlib import Path

    def mark(stage: str) -> None:
        print(STAGE_MARK + stage, file=sys.stderr, flush=True)

    path = Path(os.getcwd()) / payload["filename"]
    path.write_text(payload["code"])
    mark("import")
    from fastkernels.gpu.cuda_build import cached_builds, describe_build_error
    from fastkernels.registry.tasks import load_module

    try:
        with cached_builds():  # load_inline at import: content-cached, built for this GPU
            module = load_module(path, name="fk_candidate")
    except Exception as exc:
        built = describe_build_error(exc)
        if built is None:
            raise
        return {"stage": "import", "error": built}  # the compiler's first errors, not ninja's log
    mark("class")
    name = payload["class_name"]
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        return {"stage": "class", "error": f"after import the module has no class {name!r} (classes: "
                f"{', '.join(found) or 'none'})"}
    if not isinstance(cls, type):
        return {"stage": "class", "error": f"{name!r} is a {type(cls).__name__}, not a class"}
    import torch

    if not issubclass(cls, torch.nn.Module):
        return {"stage": "class", "error": f"class {name!r} must subclass torch.nn.Module (the baseline does)"}
    if payload.get("init_args") is not None:
        mark("init")
        cls(**payload["init_args"])
    mark("done")
    return {"stage": None, "error": ""}


def builds_cuda(code: str, cuda_only: bool = False) -> bool:
    """Whether importing the candidate compiles CUDA C++ (raw CUDA through load_inline): its first
    import then takes a compiler's time, not an import's."""
    return cuda_only or "load_inline" in code


def validate_kernel(code: str, expected_class_name: str, *, spec=None, cuda_only: bool = False,
                    timeout: float = 60.0) -> ValidationResult:
    """Check a candidate kernel file: static checks here, then import + class + `__init__` (with the
    init args of `spec`, an OperatorSpec, when given) in a sandboxed child. Never raises for
    anything the code does."""
    from fastkernels.sandbox import run_job

    bad = static_check(code, expected_class_name, cuda_only=cuda_only)
    if bad is not None:
        return bad
    if builds_cuda(code, cuda_only):
        # Importing compiles the CUDA (torch/extension.h alone is ~20-40 s of host compiler): a first
        # build needs far longer than an import. Later imports load it from the cache in milliseconds.
        timeout = max(timeout, CUDA_BUILD_TIMEOUT)
    payload, label = child_payload(code, expected_class_name, spec)
    job = run_job(_validate_in_child, payload, timeout=timeout, label=label)
    if job.ok:
        return result_of(job.value or {}, label, job.seconds)
    return result_from_failed_job(job, payload, label)


def child_payload(code: str, expected_class_name: str, spec=None) -> tuple[dict, str]:
    """(the payload of `_validate_in_child`, the label errors start with)."""
    filename = f"candidate_{re.sub(r'[^A-Za-z0-9_]', '_', expected_class_name)}.py"
    init_args = None
    if spec is not None:
        first = next(iter(spec.shapes), None)
        init_args = spec.init_args_for(first) if first else dict(spec.init_args)
    label = f"{spec.key if spec is not None else expected_class_name} candidate"
    return {"code": code, "class_name": expected_class_name, "init_args": init_args, "filename": filename}, label


def result_of(value: dict, label: str, seconds: float) -> ValidationResult:
    """The verdict from what `_validate_in_child` returned."""
    if value.get("error"):
        from fastkernels.rules.secrets import scrub

        return ValidationResult(False, error=scrub(f"{label}: {value['error']}"), stage=value.get("stage") or "class",
                                kind="ok", seconds=seconds)
    return ValidationResult(True, seconds=seconds)


def stage_reached(stderr_tail: str) -> str | None:
    """The last stage `_validate_in_child` announced on stderr (None: it never started)."""
    marks = re.findall(re.escape(STAGE_MARK) + r"(\w+)", stderr_tail)
    return marks[-1] if marks else None


def result_from_failed_job(job, payload: dict, label: str) -> ValidationResult:
    """The verdict when the child raised, crashed or timed out during `_validate_in_child`."""
    expected_class_name, init_args, filename = payload["class_name"], payload["init_args"], payload["filename"]
    marks = re.findall(re.escape(STAGE_MARK) + r"(\w+)", job.stderr_tail)
    stage = marks[-1] if marks and marks[-1] in STAGES else "import"
    line = _candidate_line(job.stderr_tail, filename)
    where = f" (line {line} of the kernel file)" if line else ""
    doing = {"import": "while importing the file", "class": "while checking the class",
             "init": f"while constructing {expected_class_name}(**{init_args!r})"}.get(stage, "")
    error = f"{job.error}{where}" + (f" [{doing}]" if doing else "")
    if job.kind == "exception":
        # The exception text plus the traceback lines inside the candidate: enough for an LLM to fix it.
        frames = _candidate_frames(job.stderr_tail, filename)
        if frames:
            error += "\n" + frames
    return ValidationResult(False, error=error, stage=stage, line=line, kind=job.kind, seconds=job.seconds)


def _candidate_frames(stderr_tail: str, filename: str) -> str:
    lines = stderr_tail.splitlines()
    out = []
    for i, ln in enumerate(lines):
        if filename in ln and ln.strip().startswith("File "):
            out.append(re.sub(r'File "[^"]*/', 'File "', ln.strip()))
            if i + 1 < len(lines) and not lines[i + 1].strip().startswith("File "):
                out.append("    " + lines[i + 1].strip())
    return "\n".join(out[-6:])
