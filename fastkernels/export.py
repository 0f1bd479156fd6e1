"""`fastkernels export DIR --out OUT`: a folder of kernels (laid out like tasks/candidate,
L{level}/{op}.py; raw CUDA files in L{level}/cuda/) written as a kernel repository in the layout of
the Hugging Face `kernels` package, loadable from disk as it is:

    OUT/build.toml                    the kernel-builder recipe: Triton kernels as a no-arch torch
                                      build; raw CUDA kernels as sources with their capabilities
    OUT/torch-ext/<pkg>/              the Python package: every kernel file (shared pieces spliced
                                      in) registers its launches as PyTorch operators at import;
                                      `layers` holds the hub layers, `ops` the operators
    OUT/build/torch-universal/        the same package as `kernels` loads it (any backend: the
                                      Triton kernels compile for the GPU, or run under the Triton
                                      interpreter on a CPU), with metadata.json and its digest
    OUT/csrc/<op>/                    raw CUDA sources (kernel-builder compiles them)
    OUT/tests/, OUT/benchmarks/       a test of every layer against its reference, and
                                      `kernels benchmark` scripts
    OUT/README.md                     the card: layers, operators, how to bind them, measured results

A layer is what `kernelize` swaps in: a pure nn.Module with only `forward`, its state read from
the host module (`self.weight`, `self.variance_epsilon` of an HF RMSNorm). Each layer calls the
kernel file's own class `forward` with the host as `self`, so it is exported only where that
forward reads nothing but the state the host has (checked on the source, `_reads_only`); any other
operator is exported as a PyTorch operator, bound through `fastkernels.patch`.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from fastkernels.errors import UsageError
from fastkernels.registry.tasks import LEVELS, kernel_source, load_task, task_names

VARIANT = "torch-universal"  # a no-arch build every backend accepts (`kernels` variant resolution)
_MARKER = "# Written by `fastkernels export`"  # first line of build.toml: how --force knows an earlier export
_NAME = re.compile(r"^[a-z][-a-z0-9]*[a-z0-9]$")  # the `kernels` package's rule for kernel names
# Compute capabilities declared for raw CUDA kernels: bf16 and the async copies they use need sm_80.
CUDA_CAPABILITIES = ("8.0", "8.6", "8.9", "9.0")


@dataclass(frozen=True)
class HubLayer:
    """One layer of the exported `layers` module, named as transformers (or `kernels`) looks it up."""

    name: str  # the class in layers.py and the key of the kernel mapping
    op: str  # our operator (L1)
    host: str  # the HF module (or function) it replaces
    state: frozenset  # `self.<attr>` the kernel class's forward may read: what the host supplies
    signature: str  # forward's parameters after self: the host's own forward signature
    body: str  # forward's body; `_forward` is the kernel class's forward
    binding: str  # how a user makes transformers look the layer up


HUB_LAYERS = (
    HubLayer("RMSNorm", "rms_norm", "LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Qwen3RMSNorm, MixtralRMSNorm",
             frozenset({"weight", "variance_epsilon"}), "hidden_states",
             "shape = hidden_states.shape\n"
             "return _forward(self, hidden_states.reshape(-1, shape[-1])).view(shape)",
             'transformers decorates these classes `@use_kernel_forward_from_hub("RMSNorm")`: map "RMSNorm"'),
    HubLayer("SiluAndMul", "silu_and_mul", "any module whose forward(x) is silu(x[..., :d]) * x[..., d:]",
             frozenset(), "x",
             "d = x.shape[-1] // 2\n"
             "rows = x.reshape(-1, 2 * d)\n"
             "return _forward(self, rows[:, :d], rows[:, d:]).view(*x.shape[:-1], d)",
             'the `kernels` name of the fused activation (vLLM-style input [..., 2d]); map "SiluAndMul"'),
    HubLayer("SiluAndMulMLP", "silu_and_mul", "LlamaMLP, MistralMLP, Qwen2MLP, Qwen3MLP (hidden_act silu)",
             frozenset(), "x",
             "gate, up = self.gate_proj(x), self.up_proj(x)\n"
             "shape = gate.shape\n"
             "h = _forward(self, gate.reshape(-1, shape[-1]), up.reshape(-1, shape[-1])).view(shape)\n"
             "return self.down_proj(h)",
             "transformers has no hub name for the gated MLP (its \"SiLU\" layer is the activation alone; "
             "the multiply is in the MLP's forward): `replace_kernel_forward_from_hub(LlamaMLP, "
             "\"SiluAndMulMLP\")`, then map \"SiluAndMulMLP\""),
    HubLayer("rotary_pos_emb", "rotary_embedding", "apply_rotary_pos_emb (Llama, Mistral, Qwen2, Qwen3, Mixtral)",
             frozenset(), "q, k, cos, sin, unsqueeze_dim=1",
             "if unsqueeze_dim != 1:  # the kernels take q, k as [batch, heads, seq, head_dim]\n"
             "    return _rotate_reference(q, k, cos, sin, unsqueeze_dim)\n"
             "return _forward(self, q, k, cos, sin)",
             'transformers decorates apply_rotary_pos_emb `@use_kernel_forward_from_hub("rotary_pos_emb")`: '
             'map "rotary_pos_emb"'),
)


@dataclass
class Kernel:
    """One kernel file of DIR as it is exported."""

    key: str  # "L1/rms_norm"
    module: str  # its module in the package: L1_rms_norm
    source: str  # the file with its shared pieces spliced in
    cuda: bool = False  # raw CUDA (compiled with load_inline at import): not imported when the package loads
    layers: list[HubLayer] = field(default_factory=list)
    note: str = ""  # why an operator that transformers names has no layer


@dataclass
class ExportResult:
    out: Path
    name: str
    kernels: list[Kernel]
    measured: bool

    @property
    def layers(self) -> list[str]:
        return [layer.name for k in self.kernels for layer in k.layers]


# ---- reading DIR -----------------------------------------------------------------------------------

def _read_kernels(src: Path) -> list[Kernel]:
    found = []
    for level in LEVELS:
        known = set(task_names(level))
        for sub, cuda in ((src / f"L{level}", False), (src / f"L{level}" / "cuda", True)):
            for path in sorted(sub.glob("*.py")) if sub.is_dir() else []:
                if path.stem not in known:
                    continue
                text = kernel_source(path)
                cuda_file = cuda or "load_inline" in text
                stem = f"L{level}_{path.stem}" + ("_cuda" if cuda_file else "")
                found.append(Kernel(f"L{level}/{path.stem}", stem, text, cuda=cuda_file))
    return found


def _self_reads(method: ast.FunctionDef) -> set[str] | None:
    """The attributes forward reads from its first argument; None if it hands `self` on whole
    (a method call, or `self` passed to a function: the attributes read there are unknown)."""
    if not method.args.args:
        return None
    me = method.args.args[0].arg
    reads, whole = set(), False
    parents = {child: node for node in ast.walk(method) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(method):
        if isinstance(node, ast.Name) and node.id == me and node is not method.args.args[0]:
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node:
                if isinstance(parents.get(parent), ast.Call) and parents[parent].func is parent:
                    whole = True  # self.helper(...): reads we cannot see
                reads.add(parent.attr)
            else:
                whole = True
    return None if whole else reads


def _reads_only(source: str, class_name: str, allowed: frozenset) -> str:
    """'' if class_name's forward reads only `allowed` from self, else why not."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return f"does not parse ({exc.msg}, line {exc.lineno})"
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        return f"defines no class {class_name}"
    forward = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward"), None)
    if forward is None:
        return f"{class_name} has no forward of its own"
    reads = _self_reads(forward)
    if reads is None:
        return f"{class_name}.forward passes self on (its state cannot be taken from the host module)"
    extra = sorted(reads - allowed)
    if extra:
        have = ", ".join(f"self.{a}" for a in sorted(allowed)) or "no state"
        return (f"{class_name}.forward reads {', '.join('self.' + a for a in extra)}; the host module has {have}")
    return ""


def _assign_layers(kernels: list[Kernel]) -> None:
    for k in kernels:
        level, _, op = k.key.partition("/")
        if k.cuda or level != "L1":
            continue
        class_name = load_task(1, op).CLASS_NAME
        for layer in HUB_LAYERS:
            if layer.op != op:
                continue
            why = _reads_only(k.source, class_name, layer.state)
            if why:
                k.note = f"no `{layer.name}` layer: {why}"
            else:
                k.layers.append(layer)


def _summaries(src: Path) -> list[dict]:
    """The agent's summary.json of each level in DIR (what `fastkernels agent` measured), if any."""
    out = []
    for level in LEVELS:
        path = src / f"L{level}" / "summary.json"
        if path.is_file():
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return out


# ---- checks ----------------------------------------------------------------------------------------

def default_name(src: Path) -> str:
    """A kernel name from DIR's path: fastkernels-<folder> (tasks/library -> fastkernels-library)."""
    slug = re.sub(r"[^a-z0-9]+", "-", src.resolve().name.lower()).strip("-") or "kernels"
    return f"fastkernels-{slug}"


def _check_out(src: Path, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder to write the kernel repository to")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise UsageError(f"--out {out} exists and is not empty: pass --force to replace an earlier export, "
                         "or choose another folder")
    resolved_src, resolved_out = src.resolve(), out.resolve()
    if resolved_out == resolved_src or resolved_out in resolved_src.parents:
        raise UsageError(f"--out {out} holds the kernels being exported ({src}): choose another folder")
    toml = out / "build.toml"
    if not (toml.is_file() and toml.read_text().startswith(_MARKER)):
        raise UsageError(f"--out {out} is not an earlier `fastkernels export` (no build.toml of ours): "
                         "--force replaces only those; choose another folder")


# ---- writing OUT -----------------------------------------------------------------------------------

def export_kernels(src, out, *, name: str | None = None, force: bool = False) -> ExportResult:
    """Write the kernels of `src` (laid out like tasks/candidate) to `out` in the `kernels` layout."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UsageError(f"no kernel folder at {src}: pass a folder laid out like tasks/candidate "
                         "(L<level>/<op>.py), e.g. tasks/library")
    name = name or default_name(src)
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r}: a kernel name is lowercase letters, digits and dashes, "
                         "starting with a letter (e.g. my-kernels)")
    kernels = _read_kernels(src)
    if not kernels:
        levels = ", ".join(f"L{lvl}: {' '.join(task_names(lvl))}" for lvl in LEVELS)
        raise UsageError(f"{src} holds no kernels: expected L<level>/<op>.py files named after operators ({levels})")
    _check_out(src, out, force)
    _assign_layers(kernels)
    summaries = _summaries(src)
    pkg = name.replace("-", "_")

    if out.exists():
        shutil.rmtree(out)
    ext = out / "torch-ext" / pkg
    files = _package_files(kernels, name)
    for rel, text in files.items():
        _write(ext / rel, text)
    variant = out / "build" / VARIANT
    for rel, text in files.items():
        _write(variant / pkg / rel, text)
    _write(variant / "metadata.json", json.dumps(_metadata(name, pkg, files), indent=2) + "\n")
    for k in kernels:
        if k.cuda:
            for rel, text in _cuda_sources(k).items():
                _write(out / rel, text)
    _write(out / "build.toml", _build_toml(name, kernels))
    _write(out / "tests" / f"test_{pkg}.py", _test_stub(pkg, kernels))
    _write(out / "benchmarks" / f"benchmark_{pkg}.py", _benchmark_stub(kernels))
    _write(out / "README.md", _card(name, out, src, kernels, summaries))
    return ExportResult(out=out, name=name, kernels=kernels, measured=bool(summaries))


def export_approved(out_dir, level: int, ops: list[str], dest, *, name: str | None = None) -> ExportResult:
    """The kernels of an agent run that a person approved (`out_dir/L<level>/<op>.py` for each of
    `ops`, with the run's summary for the card) exported to `dest` in the `kernels` layout,
    replacing an earlier export there. The cockpit's export key calls this."""
    import tempfile

    src = Path(out_dir) / f"L{level}"
    with tempfile.TemporaryDirectory(prefix="fk-export-") as tmp:
        chosen = Path(tmp) / f"L{level}"
        chosen.mkdir()
        for op in ops:
            shutil.copy2(src / f"{op}.py", chosen / f"{op}.py")
        if (src / "summary.json").is_file():
            shutil.copy2(src / "summary.json", chosen / "summary.json")
        return export_kernels(tmp, dest, name=name or default_name(Path(out_dir)), force=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _metadata(name: str, pkg: str, files: dict[str, str]) -> dict:
    """metadata.json of the build variant: its id (unique per content, as `kernels` requires: two
    different builds never share one), and the digest `kernels` checks the files against."""
    digest = {f"{pkg}/{rel}": _b64sha256(text.encode()) for rel, text in sorted(files.items())}
    content = hashlib.sha256("".join(f"{k}={v}\n" for k, v in digest.items()).encode()).hexdigest()[:10]
    return {
        "id": f"_{pkg}_universal_{content}",
        "name": name,
        "version": 1,
        "license": "apache-2.0",
        "python-depends": [],
        "backend": {"type": "universal"},
        "digest": {"algorithm": "sha256", "files": digest},
    }


def _package_files(kernels: list[Kernel], name: str) -> dict[str, str]:
    files = {f"_kernels/{k.module}.py": k.source for k in kernels}
    files["_kernels/__init__.py"] = '"""The exported kernel files, one module per operator."""\n'
    files["__init__.py"] = _init_py(kernels, name)
    files["layers.py"] = _layers_py(kernels)
    return files


def _init_py(kernels: list[Kernel], name: str) -> str:
    triton = {k.key: k.module for k in kernels if not k.cuda}
    cuda = {k.key: k.module for k in kernels if k.cuda}
    return f'''"""{name}: kernels exported by fastkernels. Each kernel file registers its launches as
PyTorch operators when it is imported (namespaced by a hash of its text, so two versions load side by
side). `ops` maps an operator name to its OpOverload (each is also an attribute of this package);
`modules` maps an operator key ("L1/rms_norm") to its kernel module; `layers` holds the hub layers.
Raw CUDA kernels compile with nvcc when imported, so they load on request: `cuda_module(key)`."""

import importlib

import torch

_TRITON = {triton!r}
_CUDA = {cuda!r}

modules = {{}}
ops = {{}}
for _key, _module in _TRITON.items():
    modules[_key] = importlib.import_module(f"._kernels.{{_module}}", __name__)
    for _value in vars(modules[_key]).values():
        if isinstance(_value, torch._ops.OpOverload) and _value.namespace.startswith("fk_"):
            ops.setdefault(_value.name().split("::")[1], _value)  # lowest level first: L1's wins


def cuda_module(key):
    """The raw CUDA kernel module of `key` ("L1/rms_norm"), compiled on first import (needs nvcc)."""
    if key not in _CUDA:
        raise KeyError(f"no raw CUDA kernel {{key!r}}; there are: {{', '.join(_CUDA) or 'none'}}")
    return importlib.import_module(f"._kernels.{{_CUDA[key]}}", __name__)


globals().update(ops)

from . import layers  # noqa: E402

__all__ = ["cuda_module", "layers", "modules", "ops", *ops]
'''


def _layers_py(kernels: list[Kernel]) -> str:
    parts = ['''"""Hub layers: what `kernels.kernelize` swaps into a model's modules. Each is a pure nn.Module
with only `forward` (no constructor, no state of its own): its state comes from the host module, and
it calls the kernel file's own class `forward` with the host as `self`. No backward: inference only."""

import torch
from torch import nn

from . import modules


def _rotate_reference(q, k, cos, sin, unsqueeze_dim):
    """HF's apply_rotary_pos_emb, for layouts the kernel does not take."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate_half(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
''']
    names = []
    for k in kernels:
        for layer in k.layers:
            class_name = load_task(1, layer.op).CLASS_NAME
            forward_name = f"_{layer.name}_forward"
            body = textwrap.indent(layer.body.replace("_forward(", f"{forward_name}("), " " * 8)
            parts.append(f'''

{forward_name} = modules[{k.key!r}].{class_name}.forward


class {layer.name}(nn.Module):
    """{layer.op} ({k.key}) in place of {layer.host}."""

    can_torch_compile = True  # the kernels are PyTorch operators
    has_backward = False

    def forward(self, {layer.signature}):
{body}
''')
            names.append(layer.name)
    parts.append(f"\n\n__all__ = {names!r}\n")
    return "".join(parts)


def _cuda_sources(k: Kernel) -> dict[str, str]:
    """The CUDA and C++ sources a raw CUDA kernel file hands to load_inline (module-level string
    constants named in its cuda_sources= / cpp_sources=), as files kernel-builder compiles."""
    op = k.key.split("/")[1]
    try:
        tree = ast.parse(k.source)
    except SyntaxError:
        return {}
    consts = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
              for t in node.targets if isinstance(t, ast.Name)}
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "load_inline":
            for kw in node.keywords:
                ext = {"cuda_sources": "cu", "cpp_sources": "cpp"}.get(kw.arg or "")
                if ext and isinstance(kw.value, ast.Name) and kw.value.id in consts:
                    out[f"csrc/{op}/{op}.{ext}"] = consts[kw.value.id]
    return out


def _build_toml(name: str, kernels: list[Kernel]) -> str:
    lines = [f"{_MARKER}; the Python package is torch-ext/{name.replace('-', '_')}/.",
             "[general]", f'name = "{name}"', "version = 1", 'license = "apache-2.0"', 'backends = ["cuda"]', ""]
    cuda = [k for k in kernels if k.cuda]
    if not cuda:
        lines += ["# Triton kernels only: a no-arch torch build (Triton compiles them for the GPU at run time).",
                  "[torch-noarch]", ""]
        return "\n".join(lines)
    lines += ["# Raw CUDA kernels: their sources as kernel-builder compiles them. The kernel files in",
              "# torch-ext compile the same sources with load_inline at import; a kernel-builder build",
              "# also needs a torch-ext/torch_binding.cpp registering the launch functions.",
              "[torch]", "src = []", ""]
    caps = ", ".join(f'"{c}"' for c in CUDA_CAPABILITIES)
    for k in cuda:
        op = k.key.split("/")[1]
        src = ", ".join(f'"{p}"' for p in sorted(_cuda_sources(k)))
        lines += [f"[kernel.{op}_cuda]", 'backend = "cuda"', 'depends = ["torch"]',
                  f"cuda-capabilities = [{caps}]", f"src = [{src}]", ""]
    return "\n".join(lines)


def _test_stub(pkg: str, kernels: list[Kernel]) -> str:
    layers = {layer.name for k in kernels for layer in k.layers}
    text = f'''"""Each hub layer of {pkg} against its PyTorch reference, on the host module's state.
On a machine without a GPU the Triton kernels run under the interpreter (small shapes)."""

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels import get_local_kernel  # noqa: E402

kernel = get_local_kernel(Path(__file__).resolve().parents[1])
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def host(**state):
    module = torch.nn.Module()
    for name, value in state.items():
        setattr(module, name, value)
    return module


def test_package_loads():
    assert isinstance(kernel.ops, dict) and kernel.modules
'''
    if "RMSNorm" in layers:
        text += '''

def test_rms_norm():
    x = torch.randn(6, 64, device=DEVICE)
    norm = host(weight=torch.randn(64, device=DEVICE), variance_epsilon=1e-6)
    want = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(kernel.layers.RMSNorm.forward(norm, x), want)
'''
    if "SiluAndMul" in layers:
        text += '''

def test_silu_and_mul():
    x = torch.randn(6, 128, device=DEVICE)
    want = torch.nn.functional.silu(x[..., :64]) * x[..., 64:]
    torch.testing.assert_close(kernel.layers.SiluAndMul.forward(host(), x), want)
'''
    return text


def _benchmark_stub(kernels: list[Kernel]) -> str:
    layers = {layer.name for k in kernels for layer in k.layers}
    text = '''"""`kernels benchmark` scripts: each workload times a hub layer on a host module's state and
checks it against the PyTorch reference (Llama-3.1-8B widths: hidden 4096, intermediate 14336)."""

import torch
import torch.nn.functional as F

from kernels.benchmark import Benchmark


def host(**state):
    module = torch.nn.Module()
    for name, value in state.items():
        setattr(module, name, value)
    return module
'''
    if "RMSNorm" in layers:
        text += '''

class RMSNormBenchmark(Benchmark):
    seed = 0

    def setup_prefill(self):
        self.x = torch.randn(4096, 4096, device=self.device, dtype=torch.bfloat16)
        self.norm = host(weight=torch.randn(4096, device=self.device, dtype=torch.bfloat16), variance_epsilon=1e-5)

    def benchmark_prefill(self):
        self.out = self.kernel.layers.RMSNorm.forward(self.norm, self.x)

    def verify_prefill(self):
        x = self.x.float()
        return self.norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)).to(self.x.dtype)
'''
    if "SiluAndMul" in layers:
        text += '''

class SiluAndMulBenchmark(Benchmark):
    seed = 0

    def setup_prefill(self):
        self.x = torch.randn(4096, 2 * 14336, device=self.device, dtype=torch.bfloat16)

    def benchmark_prefill(self):
        self.out = self.kernel.layers.SiluAndMul.forward(host(), self.x)

    def verify_prefill(self):
        return F.silu(self.x[..., :14336]) * self.x[..., 14336:]
'''
    return text


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("torch", "triton", "transformers", "kernels", "fastkernels"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            continue
    return ", ".join(parts)


def _fmt_range(r) -> str:
    if not r:
        return "-"
    lo, hi = (r if isinstance(r, (list, tuple)) else (r, r))[:2]
    return f"{lo:.2f}x" if lo == hi else f"{lo:.2f}-{hi:.2f}x"


def _measured(summaries: list[dict]) -> list[str]:
    if not summaries:
        return ["Not measured: this folder holds no `fastkernels agent` summary (L<level>/summary.json).",
                "`fastkernels check FILE` and `fastkernels bench --candidates DIR` measure the kernels.", ""]
    lines = []
    for s in summaries:
        e2e = s.get("e2e") or {}
        lines += [(f"`fastkernels agent` on {s.get('model')}{' (tiny)' if s.get('tiny') else ''}, level "
                  f"{s.get('level')}, backend {s.get('backend')}: {s.get('passing')}/{s.get('total')} kernels passing."),
                  "", "| operator | status | vs eager | vs torch.compile | roofline | note |", "|---|---|---|---|---|---|"]
        for r in s.get("ops", []):
            roof = f"{100 * r['roofline']:.0f}%" if r.get("roofline") is not None else "-"
            lines.append(f"| {r.get('op')} | {r.get('status')} | {_fmt_range(r.get('vs_eager'))} | "
                         f"{_fmt_range(r.get('vs_compile'))} | {roof} | {r.get('timing_note') or ''} |")
        lines.append("")
        if e2e:
            def num(key, fmt, e2e=e2e):
                return format(e2e[key], fmt) if e2e.get(key) is not None else "-"

            lines += [(f"End to end ({e2e.get('device') or 'device not recorded'}, {e2e.get('dtype') or '-'}, "
                      f"weights {e2e.get('weights') or '-'}): {'passed' if e2e.get('passed') else 'FAILED'}; "
                      f"greedy token match {num('token_match', '.3f')} (noise floor {num('token_match_noise', '.3f')}), "
                      f"logit error {num('logit_rel_error', '.2e')}, decode speedup {num('speedup_decode', '.2f')}x, "
                      f"prefill speedup {num('speedup_prefill', '.2f')}x."), ""]
        else:
            lines += ["End to end: not measured.", ""]
    return lines


def _card(name: str, out: Path, src: Path, kernels: list[Kernel], summaries: list[dict]) -> str:
    layers = [(k, layer) for k in kernels for layer in k.layers]
    mapping = ",\n".join(f'    "{layer.name}": {{"cuda": LocalLayerRepository(repo, layer_name="{layer.name}")}}'
                         for _, layer in layers)
    lines = [
        "---", "library_name: kernels", "license: apache-2.0", "tags:", "- kernels", "- fastkernels", "---", "",
        f"# {name}", "",
        (f"Kernels exported by `fastkernels export {src}`: {len(kernels)} kernel files "
        f"({sum(not k.cuda for k in kernels)} Triton, {sum(k.cuda for k in kernels)} raw CUDA). Every Triton "
        "kernel is a PyTorch operator (`torch.library`), so a kernelized model runs under "
        "`torch.compile(fullgraph=True)` and in CUDA graphs."), "",
        "## Use", "",
        "```python",
        "from pathlib import Path",
        "from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_mapping",
        "from kernels import replace_kernel_forward_from_hub",
        "from transformers.models.llama.modeling_llama import LlamaMLP", "",
        f'repo = Path("{out.resolve()}")  # this folder',
        'replace_kernel_forward_from_hub(LlamaMLP, "SiluAndMulMLP")  # the MLP has no hub name of its own',
        "mapping = {", mapping, "}",
        "with use_kernel_mapping(mapping):",
        '    model = kernelize(model, mode=Mode.INFERENCE, device="cuda")',
        "```", "",
        "`get_local_kernel(Path(...))` loads the package itself: `ops` (the PyTorch operators), `modules`, `layers`.",
        "On a machine without a GPU, set `TRITON_INTERPRET=1` before anything imports Triton and map `\"cpu\"`.", "",
        "## Layers", "", "| layer | operator | replaces | how transformers finds it |", "|---|---|---|---|",
    ]
    lines += [f"| `{layer.name}` | {k.key} | {layer.host} | {layer.binding} |" for k, layer in layers]
    lines += ["", "## Operators without a layer", ""]
    rest = [k for k in kernels if not k.layers]
    if not rest:
        lines.append("None.")
    for k in rest:
        why = (f"raw CUDA, compiled with nvcc when imported: `cuda_module(\"{k.key}\")`" if k.cuda
               else f"{k.note or 'transformers has no hub layer name for it'}; its operators are in `ops`")
        lines.append(f"- {k.key} (`_kernels/{k.module}.py`): {why}. Bind it into a model with "
                     f"`fastkernels.patch(model, {{\"{k.key}\": path}})`.")
    lines += ["", "## Measured", ""] + _measured(summaries)
    lines += ["## Provenance", "",
              f"Exported from `{src}` with {_versions()}. Source files (sha256 of the spliced text):", ""]
    lines += [f"- {k.key}{' (cuda)' if k.cuda else ''}: {hashlib.sha256(k.source.encode()).hexdigest()[:16]}"
              for k in kernels]
    return "\n".join(lines) + "\n"
