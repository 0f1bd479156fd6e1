"""Task files and the operators they define.

A task file (`tasks/baseline/L{level}/{op}.py`) is plain Python that a person and an LLM read the
same way. It defines the baseline `nn.Module` and, below it, what the harness needs:

    CLASS_NAME = "RMSNorm"                # the class every candidate must define
    FAMILIES = {"llama": "LlamaRMSNorm"}  # model families that use it -> the HF module/function
    BOUND = "memory"                      # which ceiling the roofline uses: "memory" or "compute"
    DTYPES = ("bfloat16", "float32")      # dtypes it is checked in (optional, this is the default)

    def init_args(config) -> dict                       # constructor kwargs, from the HF config
    def shapes(config, workload) -> {name: {dim: int}}  # at least "prefill" and "decode"
    def make_inputs(config, shape, dtype, device, generator) -> tuple   # fresh random inputs
    def cost(config, shape, dtype) -> {"bytes": int, "flops": int}      # for the roofline

A shape may carry an "init" dict that overrides init args for that shape (Qwen3's per-head q/k
norms are RMSNorms of head_dim, not hidden_size), and a "bound" that overrides BOUND for that shape
(attention: prefill is compute-bound, decode memory-bound).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from fastkernels.errors import UsageError

LEVELS = (1, 2, 3, 4)
LEVEL_NAMES = {1: "kernels", 2: "blocks", 3: "decoder layers", 4: "whole model"}
DEFAULT_DTYPES = ("bfloat16", "float32")
REQUIRED = ("CLASS_NAME", "FAMILIES", "init_args", "shapes", "make_inputs", "cost")


def tasks_root() -> Path:
    """The tasks/ folder: $FASTKERNELS_TASKS, else the package data of an installed copy
    (pyproject.toml maps tasks/ to fastkernels/tasks), else tasks/ of the checkout."""
    env = os.environ.get("FASTKERNELS_TASKS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    installed = package / "tasks"
    return installed if installed.is_dir() else package.parent / "tasks"


def baseline_dir(level: int) -> Path:
    return tasks_root() / "baseline" / f"L{level}"


def library_dir(level: int) -> Path:
    return tasks_root() / "library" / f"L{level}"


def shared_dir() -> Path:
    """tasks/library/_shared: pieces several library files splice in (`# fastkernels: include NAME`)."""
    return tasks_root() / "library" / "_shared"


_INCLUDE = re.compile(r"^# fastkernels: include (\w+)[ \t]*$", re.M)
_PIECE = "# fastkernels: piece\n"


def expand_includes(text: str, *, _seen: tuple[str, ...] = ()) -> str:
    """`text` with every line `# fastkernels: include NAME` replaced by the piece in
    tasks/library/_shared/NAME.py (what follows its `# fastkernels: piece` line). Text without such
    lines comes back unchanged."""

    def piece(match: re.Match) -> str:
        name = match.group(1)
        if name in _seen:
            raise UsageError(f"shared piece {name!r} includes itself (via {' -> '.join(_seen)})")
        path = shared_dir() / f"{name}.py"
        if not path.is_file():
            raise UsageError(f"`# fastkernels: include {name}`: no shared piece {path}")
        src = path.read_text()
        if _PIECE not in src:
            raise UsageError(f"{path} has no `{_PIECE.strip()}` line")
        body = src.split(_PIECE, 1)[1]
        return expand_includes(body, _seen=(*_seen, name)).rstrip("\n")

    return _INCLUDE.sub(piece, text)


def kernel_source(path: Path | str) -> str:
    """The text of a kernel file as it is served, validated and imported: the file itself, with
    the shared pieces it includes spliced in (library files; any other file is read as is)."""
    return expand_includes(Path(path).read_text())


@dataclass(frozen=True)
class Workload:
    """How big the inputs are: the shapes of every task derive from these and the model config."""

    batch: int
    prefill_len: int
    decode_context: int
    # Tensor-parallel ranks (`--tp`): the shapes are one rank's (heads and MLP widths / tp), the
    # task functions get that rank's view of the config (fastkernels.models.sharding.rank_config).
    tp: int = 1

    @classmethod
    def default(cls, small: bool) -> "Workload":
        # Full: Llama-3.1-8B prefill of 4096 tokens and decode of one token over a 4096 context.
        # Small: what the Triton interpreter gets through in seconds on a CPU.
        return cls(batch=2, prefill_len=16, decode_context=16) if small else cls(1, 4096, 4096)


def rank_config(config, tp: int):
    """`config` as one of `tp` tensor-parallel ranks sees the model (itself when tp is 1)."""
    if tp == 1:
        return config
    from fastkernels.models.sharding import rank_config as shard

    return shard(config, tp)


def check_level(level) -> int:
    try:
        lvl = int(level)
    except (TypeError, ValueError):
        lvl = None
    if lvl not in LEVELS:
        raise UsageError(f"bad level {level!r}: choose one of 1 (kernels), 2 (blocks), 3 (decoder layers), 4 (whole model)")
    return lvl


def load_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a Python file by path under a unique module name (task files are ours; candidates
    are imported only inside the sandbox's child process). Under the Triton interpreter, its fp32 ->
    bf16 conversions round as a GPU's do first (fastkernels.gpu.interpreter)."""
    from fastkernels.gpu.interpreter import round_like_gpu

    round_like_gpu()
    path = Path(path).resolve()
    mod_name = name or f"fk_task_{path.parent.name}_{path.stem}_{abs(hash(str(path)))}"
    text = path.read_text()
    if _INCLUDE.search(text):  # a library file with shared pieces: import its served text
        path = _expanded_file(path, expand_includes(text))
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def _expanded_file(path: Path, text: str) -> Path:
    """A file holding `text`, named after `path`, keyed by its content: imported code must live in a
    file (Triton reads a kernel's source back with inspect)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    user = getattr(os, "getuid", lambda: "")()  # one folder per user: /tmp is shared
    out = Path(tempfile.gettempdir()) / f"fastkernels-expanded-{user}" / digest / path.name
    if not out.is_file():  # named by its content: an existing file already holds `text`
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, out)
    return out


@lru_cache(maxsize=None)
def load_task(level: int, op: str) -> ModuleType:
    path = baseline_dir(level) / f"{op}.py"
    if not path.is_file():
        raise UsageError(f"no task {op!r} at level {level} (looked for {path})")
    module = load_module(path, name=f"fk_baseline_L{level}_{op}")
    missing = [k for k in REQUIRED if not hasattr(module, k)]
    if missing:
        raise TypeError(f"task file {path} lacks {', '.join(missing)}")
    return module


def task_names(level: int) -> list[str]:
    return sorted(p.stem for p in baseline_dir(level).glob("*.py") if not p.stem.startswith("_"))


@dataclass
class OperatorSpec:
    """One operator of one model at one level, as discovery returns it."""

    name: str
    level: int
    class_name: str
    source_code: str
    models: list[str]
    families: dict[str, str]
    path: Path
    model_id: str
    family: str
    tiny: bool
    stands_for: str
    bound: str
    dtypes: tuple[str, ...]
    init_args: dict
    shapes: dict[str, dict] = field(default_factory=dict)
    description: str = ""
    tp: int = 1  # the shapes are one of `tp` tensor-parallel ranks'

    def config(self):
        """The HF config the task functions see: one rank's under tensor parallelism."""
        from fastkernels.models.catalog import resolve

        return rank_config(resolve(self.model_id, self.tiny).hf_config(), self.tp)

    @property
    def key(self) -> str:
        return f"L{self.level}/{self.name}"

    def task(self) -> ModuleType:
        return load_task(self.level, self.name)

    def init_args_for(self, shape_name: str) -> dict:
        return {**self.init_args, **self.shapes[shape_name].get("init", {})}

    def bound_for(self, shape_name: str) -> str:
        """Which roofline ceiling a shape is measured against: its own "bound", else the task's."""
        return self.shapes[shape_name].get("bound", self.bound)

    def to_dict(self) -> dict:
        """JSON-safe form (what crosses into a sandbox child and into tracking)."""
        return {
            "name": self.name,
            "level": self.level,
            "class_name": self.class_name,
            "model_id": self.model_id,
            "family": self.family,
            "tiny": self.tiny,
            "stands_for": self.stands_for,
            "bound": self.bound,
            "dtypes": list(self.dtypes),
            "init_args": self.init_args,
            "shapes": self.shapes,
            "models": self.models,
            "tp": self.tp,
        }


def build_spec(level: int, op: str, model_id: str, tiny: bool, workload: Workload | None = None) -> OperatorSpec:
    """The spec of task `op` for one model: its init args and shapes from that model's config."""
    from fastkernels.models.catalog import known_models, resolve

    entry = resolve(model_id, tiny)
    task = load_task(level, op)
    if entry.family not in task.FAMILIES:
        raise UsageError(f"operator {op!r} (L{level}) is not used by {model_id} ({entry.family})")
    workload = workload or Workload.default(small=tiny)
    config = rank_config(entry.hf_config(), workload.tp)
    shapes = task.shapes(config, workload)
    if workload.tp > 1:  # say so in every shape: these are one rank's
        shapes = {name: {**shape, "tp": workload.tp} for name, shape in shapes.items()}
    users = [m for m in known_models() if resolve(m).family in task.FAMILIES]
    path = baseline_dir(level) / f"{op}.py"
    return OperatorSpec(
        name=op,
        level=level,
        class_name=task.CLASS_NAME,
        source_code=path.read_text(),
        models=users,
        families=dict(task.FAMILIES),
        path=path,
        model_id=model_id,
        family=entry.family,
        tiny=tiny,
        stands_for=task.FAMILIES[entry.family],
        bound=getattr(task, "BOUND", "memory"),
        dtypes=tuple(getattr(task, "DTYPES", DEFAULT_DTYPES)),
        init_args=task.init_args(config),
        shapes=shapes,
        description=(task.__doc__ or "").strip().splitlines()[0] if task.__doc__ else "",
        tp=workload.tp,
    )


def discover(model_id: str, level, tiny: bool = False, workload: Workload | None = None) -> list[OperatorSpec]:
    """Every operator of `model_id` at `level`, in a stable order."""
    from fastkernels.models.catalog import resolve

    lvl = check_level(level)
    entry = resolve(model_id, tiny)
    specs = []
    for op in task_names(lvl):
        if entry.family in load_task(lvl, op).FAMILIES:
            specs.append(build_spec(lvl, op, model_id, tiny, workload))
    return specs


def dtype_of(name: str):
    import torch

    return getattr(torch, name) if isinstance(name, str) else name


def randomize_parameters(module, generator, std: float | None = None) -> None:
    """Give every parameter random values, in place: 1-D `weight`s (norm scales) 1 + U(-0.5, 0.5),
    biases N(0, 0.1), matrices N(0, std) with std = 1/sqrt(fan_in) unless given (keeps the
    activations of a block at unit scale, so dtype tolerances mean the same at every level)."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim == 1 and leaf == "weight":
                vals = 1.0 + (torch.rand(p.shape, generator=generator, device=generator.device) - 0.5)
            elif p.ndim == 1:
                vals = torch.randn(p.shape, generator=generator, device=generator.device) * 0.1
            else:
                s = std if std is not None else p.shape[-1] ** -0.5
                vals = torch.randn(p.shape, generator=generator, device=generator.device) * s
            p.copy_(vals.to(device=p.device, dtype=p.dtype))


def build_baseline(spec: "OperatorSpec", shape_name: str, dtype, device, seed: int = 0):
    """The baseline module of `spec` for one shape, with seeded random weights, on device."""
    import torch

    cls = getattr(spec.task(), spec.class_name)
    module = cls(**spec.init_args_for(shape_name))
    module = module.to(device=device, dtype=dtype_of(dtype))
    randomize_parameters(module, torch.Generator(device=device).manual_seed(seed))
    return module.eval()


def build_inputs(spec: "OperatorSpec", shape_name: str, dtype, device, seed: int):
    """Fresh seeded inputs for one shape of `spec`."""
    import torch

    config = spec.config()
    gen = torch.Generator(device=device).manual_seed(seed)
    return spec.task().make_inputs(config, spec.shapes[shape_name], dtype_of(dtype), device, gen)
