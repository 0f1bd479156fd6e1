"""Put operator implementations into a live Hugging Face model, one model instance at a time.

    handle = fastkernels.patch(model, "tasks/candidate")          # every level found there
    with fastkernels.patch(model, {"rms_norm": code}, level=1):   # or a dict {op or "L1/op": code|path}
        model.generate(...)
    handle.unpatch()                                               # the original, bit for bit

Nothing in transformers is changed globally: a binder (one per operator, `BINDERS`) finds the call
sites of its operator in *this* model and either swaps a submodule of this instance (RMSNorm, MLP
and MoE blocks, attention blocks, decoder layers) or binds a method on this instance only
(`types.MethodType`: a decoder layer's, attention module's, MLP's, router's forward replaced by our
own forward that mirrors HF's and calls the operator). A baseline model and a patched model coexist
in one process, and `torch.compile` of another model keeps working.

Weights move by state dict (task files use HF's parameter names); the implementation gets its own
copies, so the original modules are never touched and un-patching restores them exactly. Patch a
model after moving it to its device and dtype: the implementations are built where its weights are.

Without `shadow=True` the model calls each implementation's forward itself, from forwards that add
per call only the reshapes an operator's [tokens, hidden] inputs need: at batch-1 decode every
operator is launch-bound, so a frame or a view per call is lost speed (benchmarks/binding_overhead.py
measures a model patched with the baseline files against the unpatched one).

Shadow check (`shadow=True`): every patched call also runs the operator's baseline (the task file's
class, same weights) on clones of the same inputs and compares the two outputs with the operator's
dtype tolerances; the candidate's output flows on, so the model runs as it would in production.
`handle.shadow_report()` gives max/mean error per operator and call site, the worst layer, and
pass/fail naming the operator and layer of every failure. The tolerances are the unit benchmark's
(`fastkernels.bench.unit.TOLERANCES`, one definition): an element passes when
|candidate - baseline| <= atol * rms(baseline) + rtol * |baseline|; a call that exceeds it is judged
as the unit benchmark judges, against the baseline run in fp32: within the same tolerance of it, or
no worse than twice the baseline's own error (deep blocks in bf16).

The transformers version matters in one place: 5.24 names the cache argument `cache`, 5.17
`past_key_values`. Our forwards accept both (a decoder layer hands the model's keyword arguments to
its attention as they came).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import re
import tempfile
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from fastkernels.errors import UsageError
from fastkernels.registry.tasks import LEVELS, kernel_source, load_module, load_task, task_names

# Family -> the class-name prefix of its HF modules (modeling_<family>.<Prefix>RMSNorm, ...).
PREFIX = {
    "llama": "Llama",
    "mistral": "Mistral",
    "mixtral": "Mixtral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "qwen3_moe": "Qwen3Moe",
}


# ---- loading implementations ---------------------------------------------------------------

@dataclass
class Implementation:
    """One operator implementation to bind: its task (the baseline file) and its class."""

    level: int
    op: str
    cls: type
    source: str  # where it came from (a path, or "<code>")

    @property
    def key(self) -> str:
        return f"L{self.level}/{self.op}"

    def task(self):
        return load_task(self.level, self.op)


def _level_of(op: str, level: int | None) -> int:
    if level is not None:
        if op not in task_names(level):
            raise UsageError(f"no operator {op!r} at level {level}; level {level} has: {', '.join(task_names(level))}")
        return level
    found = [lvl for lvl in LEVELS if op in task_names(lvl)]
    if not found:
        raise UsageError(f"no operator named {op!r} at any level; write it as 'L<level>/<op>'")
    if len(found) > 1:
        raise UsageError(f"operator {op!r} exists at levels {found}; write it as 'L<level>/{op}'")
    return found[0]


def _load_class(level: int, op: str, path: Path, source: str) -> Implementation:
    from fastkernels.bench.cuda_build import cached_builds

    task = load_task(level, op)
    with cached_builds():  # a raw CUDA kernel's load_inline: content-cached, built for this GPU
        module = load_module(path)
    cls = getattr(module, task.CLASS_NAME, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise UsageError(f"{source} defines no nn.Module class {task.CLASS_NAME!r} (the class L{level}/{op} needs)")
    return Implementation(level=level, op=op, cls=cls, source=source)


def load_implementations(candidates, level: int | None = None, only: Iterable[str] | None = None) -> list[Implementation]:
    """The implementations named by `candidates`: a directory laid out like tasks/candidate
    (L{level}/{op}.py; only L{level} when level is given) or a dict {op or "L1/op": code or path}.
    `only` keeps those keys ("L1/rms_norm" or "rms_norm"). Sorted highest level first: a swapped
    decoder layer hides the kernels inside it, so the outer binding goes in first."""
    impls: list[Implementation] = []
    if isinstance(candidates, Mapping):
        tmp = None
        for key, value in candidates.items():
            lvl_part, _, op = str(key).rpartition("/")
            lvl = _level_of(op, int(lvl_part.lstrip("Ll")) if lvl_part else level)
            if level is not None and lvl != level:
                continue
            path = Path(value) if isinstance(value, Path) else None
            if path is None and isinstance(value, str) and "\n" not in value and value.endswith(".py"):
                path = Path(value)
            if path is not None:
                if not path.is_file():
                    raise UsageError(f"candidate file {path} does not exist")
                impls.append(_load_class(lvl, op, path, str(path)))
            else:
                if tmp is None:
                    tmp = Path(tempfile.mkdtemp(prefix="fk-candidates-"))
                file = tmp / f"L{lvl}_{op}.py"
                file.write_text(str(value))
                impls.append(_load_class(lvl, op, file, f"<code of L{lvl}/{op}>"))
    else:
        root = Path(candidates)
        if not root.is_dir():
            raise UsageError(f"candidate directory {root} does not exist")
        for lvl in ([level] if level is not None else list(LEVELS)):
            folder = root / f"L{lvl}"
            known = set(task_names(lvl))
            for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
                if path.stem in known:
                    impls.append(_load_class(lvl, path.stem, path, str(path)))
    if only is not None:
        wanted = set(only)
        impls = [i for i in impls if i.key in wanted or i.op in wanted]
    impls.sort(key=lambda i: (-i.level, i.op))
    return impls


def find_candidates(candidates, level: int | None = None) -> dict[str, str]:
    """{"L1/op": source code} of the candidates named like `load_implementations` takes them,
    without importing anything (what crosses into a sandbox child)."""
    out: dict[str, str] = {}
    if isinstance(candidates, Mapping):
        for key, value in candidates.items():
            lvl_part, _, op = str(key).rpartition("/")
            lvl = _level_of(op, int(lvl_part.lstrip("Ll")) if lvl_part else level)
            if level is not None and lvl != level:
                continue
            is_path = isinstance(value, Path) or (isinstance(value, str) and "\n" not in value and value.endswith(".py"))
            if is_path and not Path(value).is_file():
                raise UsageError(f"candidate file {value} does not exist")
            out[f"L{lvl}/{op}"] = kernel_source(value) if is_path else str(value)
        return out
    root = Path(candidates)
    if not root.is_dir():
        raise UsageError(f"candidate directory {root} does not exist")
    for lvl in ([level] if level is not None else list(LEVELS)):
        folder = root / f"L{lvl}"
        known = set(task_names(lvl))
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            if path.stem in known:
                out[f"L{lvl}/{path.stem}"] = kernel_source(path)
    return out


# ---- the shadow check ------------------------------------------------------------------------

@dataclass
class SiteShadow:
    """What the shadow check saw at one call site (one module of one layer)."""

    op: str
    site: str
    layer: int | None
    calls: int = 0
    max_abs: float = 0.0
    mean_abs: float = 0.0  # mean over calls of each call's mean |candidate - baseline|
    worst_ratio: float = 0.0  # max of |diff| / (atol + rtol |baseline|): passes at <= 1
    passed: bool = True
    failure: str | None = None
    phases: list[str] = field(default_factory=list)


@dataclass
class OpShadow:
    op: str  # "L1/rms_norm"
    passed: bool
    calls: int
    sites: int
    max_abs: float
    mean_abs: float
    worst_site: str | None
    worst_layer: int | None
    worst_ratio: float
    rtol: float
    atol: float
    failures: list[str] = field(default_factory=list)


@dataclass
class ShadowReport:
    passed: bool
    ops: list[OpShadow]
    sites: list[SiteShadow]

    @property
    def failures(self) -> list[str]:
        return [f for op in self.ops for f in op.failures]

    def failing_ops(self) -> list[str]:
        return [op.op for op in self.ops if not op.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "failures": self.failures,
                "ops": [asdict(o) for o in self.ops], "sites": [asdict(s) for s in self.sites]}


def _flat(out) -> list:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _dense_routing(out, num_experts: int):
    """(weights[T,K], indices[T,K]) -> [T,E] fp32 map: equal routings compare equal whatever the
    order of the k picks."""
    weights, indices = out
    dense = torch.zeros(indices.shape[0], num_experts, dtype=torch.float32, device=indices.device)
    return (dense.scatter(1, indices.long(), weights.float()),)


class ShadowCheck:
    """Collects the comparisons of every patched call while `enabled`."""

    def __init__(self) -> None:
        self.enabled = False
        self.phase = "forward"
        self.sites: dict[str, SiteShadow] = {}
        self.tolerances: dict[str, tuple[float, float]] = {}

    def compare(self, site: "Site", cand_out, ref_out, mutated: bool, strided: list[int] | None = None,
                reference: Callable | None = None) -> None:
        """Compare one call's outputs; `reference()` gives the baseline's outputs in fp32 (asked for
        only when the flat tolerance is exceeded: see `_floor_ratio`)."""
        refs32: list | None = None
        rec = self.sites.setdefault(site.name + "|" + site.key, SiteShadow(op=site.key, site=site.name, layer=site.layer))
        rec.calls += 1
        if self.phase not in rec.phases:
            rec.phases.append(self.phase)
        if site.normalize is not None:
            try:
                cand_out, ref_out = site.normalize(cand_out), site.normalize(ref_out)
            except Exception as exc:  # noqa: BLE001 - a malformed output is a finding, not a crash
                self._fail(rec, f"its output has the wrong form ({type(exc).__name__}: {exc})")
                return
        cands, refs = _flat(cand_out), _flat(ref_out)
        if len(cands) != len(refs):
            self._fail(rec, f"returned {len(cands)} outputs, the baseline returns {len(refs)}")
            return
        call_mean = 0.0
        for i, (c, r) in enumerate(zip(cands, refs)):
            what = f"output {i}" if len(refs) > 1 else "output"
            if not torch.is_tensor(c) or c.shape != r.shape:
                shape = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
                self._fail(rec, f"{what} has shape {shape}, the baseline's is {tuple(r.shape)}")
                return
            if c.dtype != r.dtype:
                self._fail(rec, f"{what} is {c.dtype}, the baseline's is {r.dtype}")
                return
            rtol, atol = self.tolerances.get(site.key, (0.0, 0.0)) if r.is_floating_point() else (0.0, 0.0)
            cf, rf = c.detach().double(), r.detach().double()
            diff = (cf - rf).abs()
            bad_nan = ~torch.isfinite(cf) & torch.isfinite(rf)
            diff = torch.where(torch.isfinite(rf), diff, torch.zeros_like(diff))
            diff = torch.where(bad_nan, torch.full_like(diff, float("inf")), diff)
            finite_ref = rf.nan_to_num(0.0, posinf=0.0, neginf=0.0)
            rms = float(finite_ref.pow(2).mean().sqrt()) if finite_ref.numel() else 0.0
            bound = atol * rms + rtol * finite_ref.abs()
            ratio = diff / bound.clamp_min(1e-30) if (rtol or atol) else torch.where(diff > 0, float("inf"), 0.0)
            mx = float(diff.max()) if diff.numel() else 0.0
            rec.max_abs = max(rec.max_abs, mx)
            finite = diff[torch.isfinite(diff)]
            call_mean = max(call_mean, float(finite.mean()) if finite.numel() else 0.0)
            worst = float(ratio.max()) if ratio.numel() else 0.0
            if worst > 1.0 and reference is not None and r.is_floating_point() and not bool(bad_nan.any()):
                if refs32 is None:
                    out32 = reference()
                    refs32 = _flat(site.normalize(out32) if site.normalize is not None else out32)
                floor = _floor_ratio(cf, rf, refs32[i].detach().double(), atol, rtol)
                if floor <= 1.0:
                    worst = floor
            rec.worst_ratio = max(rec.worst_ratio, worst)
            if bool(bad_nan.any()):
                self._fail(rec, f"{what} has NaN/Inf where the baseline is finite ({self.phase})")
            elif worst > 1.0:
                where = tuple(int(i) for i in torch.unravel_index(ratio.flatten().argmax(), ratio.shape))
                layout = (f"; inputs {', '.join(map(str, strided))} are strided views here, not contiguous"
                          if strided else "")
                self._fail(rec, f"{what} off by up to {mx:.3g} (at index {where}; allowed {atol:g} x rms {rms:.3g}"
                                f" + {rtol:g} x |baseline|; {self.phase}{layout})")
        rec.mean_abs += (call_mean - rec.mean_abs) / rec.calls
        if mutated:
            self._fail(rec, f"modified its input in place ({self.phase})")

    @staticmethod
    def _fail(rec: SiteShadow, why: str) -> None:
        rec.passed = False
        if rec.failure is None:
            rec.failure = why

    def report(self, keys: Iterable[str] = ()) -> ShadowReport:
        by_op: dict[str, list[SiteShadow]] = {k: [] for k in keys}
        for rec in self.sites.values():
            by_op.setdefault(rec.op, []).append(rec)
        ops = []
        for key, recs in by_op.items():
            rtol, atol = self.tolerances.get(key, (0.0, 0.0))
            called = [r for r in recs if r.calls]
            worst = max(called, key=lambda r: (not r.passed, r.worst_ratio), default=None)
            failures = [f"{key} at {r.site}" + (f" (layer {r.layer})" if r.layer is not None else "") + f": {r.failure}"
                        for r in recs if not r.passed]
            ops.append(OpShadow(
                op=key, passed=not failures, calls=sum(r.calls for r in recs), sites=len(called),
                max_abs=max((r.max_abs for r in called), default=0.0),
                mean_abs=sum(r.mean_abs for r in called) / len(called) if called else 0.0,
                worst_site=worst.site if worst else None, worst_layer=worst.layer if worst else None,
                worst_ratio=worst.worst_ratio if worst else 0.0, rtol=rtol, atol=atol, failures=failures))
        sites = sorted(self.sites.values(), key=lambda r: (r.op, r.layer if r.layer is not None else -1, r.site))
        return ShadowReport(passed=all(o.passed for o in ops), ops=ops, sites=sites)


def _floor_ratio(cand, base, ref32, atol: float, rtol: float) -> float:
    """The unit benchmark's acceptance against the fp32 baseline `ref32`, as a ratio (<= 1 passes):
    within the flat tolerance of ref32, or, for deep blocks whose roundings compound, no worse than
    twice the baseline's own error (at the worst element and in RMS)."""
    err = (cand - ref32).abs()
    rms = float(ref32.pow(2).mean().sqrt()) if ref32.numel() else 0.0
    flat = float((err / (atol * rms + rtol * ref32.abs()).clamp_min(1e-30)).max()) if err.numel() else 0.0
    base_err = (base - ref32).abs()
    if not bool(torch.isfinite(base_err).all()) or not err.numel():
        return flat
    worst = float(err.max()) / max(2 * float(base_err.max()), 1e-30)
    spread = float(err.pow(2).mean().sqrt()) / max(2 * float(base_err.pow(2).mean().sqrt()), 1e-30)
    return min(flat, max(worst, spread))


def _to_fp32(args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point()
                 else (list(_to_fp32(a)) if isinstance(a, list) else a) for a in args)


def _clone(args):
    return tuple(a.clone() if torch.is_tensor(a) else (list(_clone(a)) if isinstance(a, list) else a) for a in args)


def _same(a, b) -> bool:
    if torch.is_tensor(a):
        return a.shape == b.shape and bool(torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) if a.is_floating_point() else torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return all(_same(x, y) for x, y in zip(a, b))
    return True


class Site:
    """One call site of one operator: calls the implementation and, while the shadow check is on,
    the baseline on clones of the same inputs."""

    def __init__(self, impl: Implementation, name: str, candidate: nn.Module, baseline: nn.Module | None,
                 shadow: ShadowCheck, normalize: Callable | None = None, consumed: tuple[int, ...] = ()) -> None:
        self.key = impl.key
        self.name = name
        m = re.search(r"layers\.(\d+)", name)
        self.layer = int(m.group(1)) if m else None
        self.candidate = candidate
        self.run_candidate = candidate.forward  # the class's forward, before any adapter is bound
        self.baseline = baseline
        self.shadow = shadow
        self.normalize = normalize
        # Inputs the model never reads again after this call (rotary's q and k, the MLP's gate and
        # up): a kernel may overwrite them in place, as Liger's rope does to save a copy.
        self.consumed = consumed
        self._baseline32: nn.Module | None = None

    @property
    def entry(self) -> Callable:
        """What the model's call site calls. Without a baseline (a patch made without shadow=True)
        that is the implementation's forward itself: no frame of ours between the model and the
        kernel, which at batch-1 decode is launch-bound. With one, it is this site, which runs the
        shadow check while it is enabled (and reads `run_candidate` at each call)."""
        return self.run_candidate if self.baseline is None else self

    def __call__(self, *args):
        if not (self.shadow.enabled and self.baseline is not None):
            return self.run_candidate(*args)
        clones = _clone(args)
        out = self.run_candidate(*args)
        kept = [i for i in range(len(args)) if i not in self.consumed]
        mutated = not _same([args[i] for i in kept], [clones[i] for i in kept])
        with torch.no_grad():
            ref = self.baseline(*_clone(clones))
        strided = [i for i, a in enumerate(args) if torch.is_tensor(a) and not a.is_contiguous()]
        self.shadow.compare(self, out, ref, mutated, strided, reference=lambda: self._reference32(clones))
        return out

    def _reference32(self, clones):
        """The baseline in fp32 on fp32 copies of the inputs (built on first need: only a call
        that exceeds the flat tolerance asks for it)."""
        if self._baseline32 is None:
            self._baseline32 = copy.deepcopy(self.baseline).float()
        with torch.no_grad():
            return self._baseline32(*_to_fp32(clones))


# ---- building implementations from a module's weights ------------------------------------------

def _module_device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _build(cls: type, init: dict, weights: dict, device, what: str) -> nn.Module:
    """cls(**init) holding copies of `weights` (their dtypes and device kept)."""
    try:
        module = cls(**init)
    except Exception as exc:  # noqa: BLE001 - a constructor that fails is the implementation's problem
        raise UsageError(f"{what}: {cls.__name__}(**{init}) failed: {type(exc).__name__}: {exc}") from exc
    params = dict(module.named_parameters())
    missing = [k for k in params if k not in weights]
    if missing:
        raise UsageError(f"{what}: {cls.__name__} has parameters the model does not: {', '.join(missing[:5])}")
    # Parameters take copies of the model's (its dtype and device); buffers the implementation
    # made itself (tables, constants) stay as they are unless the model has them under that name.
    copies = {k: weights[k].detach().clone() for k in module.state_dict() if k in weights}
    module.load_state_dict(copies, strict=False, assign=True)
    return module.to(device).eval()


# ---- reading and writing the HF cache -----------------------------------------------------------

def _pop_cache(kwargs: dict):
    cache = kwargs.pop("cache", None)
    legacy = kwargs.pop("past_key_values", None)
    return cache if cache is not None else legacy


def _cache_kwarg(cls) -> str:
    """The name this transformers version gives the cache argument of `cls.forward`."""
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def read_past(cache, layer_idx: int, like: torch.Tensor, kv_heads: int, head_dim: int):
    """(past_key, past_value) [B, Hkv, P, D] of one layer from an HF cache (P may be 0)."""
    if cache is not None:
        layers = getattr(cache, "layers", None)
        if layers is not None and layer_idx < len(layers):
            layer = layers[layer_idx]
            keys = getattr(layer, "keys", None)
            if getattr(layer, "is_initialized", keys is not None) and keys is not None and keys.numel():
                length = cache.get_seq_length(layer_idx)
                return layer.keys[:, :, :length], layer.values[:, :, :length]
    empty = like.new_empty(like.shape[0], kv_heads, 0, head_dim)
    return empty, empty.clone()


# ---- the forwards we bind on HF instances (each mirrors HF's and calls the operators) --------------
#
# At batch-1 decode every operator is launch-bound, so these forwards add per call no more than the
# views an operator's [tokens, hidden] inputs need: what never changes (has a q_norm, the sliding
# window) is read at bind time (PREPARE), and shapes go back with view_as (0.7 us a call, where
# view(torch.Size) costs 1.8 us: CPU, torch 2.13; benchmarks/binding_overhead.py measures the whole).

def _decoder_layer_forward(self, hidden_states, **kwargs):
    """HF <Family>DecoderLayer.forward with "residual + h; post_attention_layernorm" as one op. The
    keyword arguments (mask, positions, the cache under this version's name) reach the attention as
    the model passed them."""
    width = hidden_states.shape[-1]
    h = self.input_layernorm(hidden_states)
    h, _ = self.self_attn(hidden_states=h, **kwargs)
    h, residual = self._fk_slots["add_rms_norm"](h.reshape(-1, width), hidden_states.reshape(-1, width))
    return residual.view_as(hidden_states) + self.mlp(h.view_as(hidden_states))


def _prepare_attention(attn: nn.Module, slots: dict) -> None:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    slots["attention_functions"] = ALL_ATTENTION_FUNCTIONS
    slots["qk_norm"] = "q_norm" in attn._modules  # Qwen3: per-head norms before rope
    # Qwen2/Qwen3 keep each layer's window on the module, Mistral/Mixtral read their config's; Llama has none.
    slots["sliding_window"] = (attn.sliding_window if "sliding_window" in vars(attn)
                               else getattr(attn.config, "sliding_window", None))


def _attention_forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                       past_key_values=None, **kwargs):
    """HF <Family>Attention.forward with rotary and/or the attention core as operators."""
    slots = self._fk_slots
    if cache is None:  # transformers 5.17 calls it past_key_values
        cache = past_key_values
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    q = self.q_proj(hidden_states).view(hidden_shape)
    k = self.k_proj(hidden_states).view(hidden_shape)
    v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
    if slots["qk_norm"]:
        q, k = self.q_norm(q), self.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = position_embeddings
    rope = slots.get("rotary_embedding")
    if rope is not None:  # q, k as HF lays them out: [B, H, S, D] views of [B, S, H, D] storage
        q, k = rope(q, k, cos, sin)
    else:
        q, k = slots["hf"].apply_rotary_pos_emb(q, k, cos, sin)
    if cache is not None:
        k, v = cache.update(k, v, self.layer_idx)
    core = slots.get("attention")
    if core is not None:
        out = core(q.contiguous(), k.contiguous(), v.contiguous())
    else:
        interface = slots["attention_functions"].get_interface(self.config._attn_implementation,
                                                               slots["hf"].eager_attention_forward)
        out, _ = interface(self, q, k, v, attention_mask, dropout=0.0 if not self.training else self.attention_dropout,
                           scaling=self.scaling, sliding_window=slots["sliding_window"], **kwargs)
    out = out.reshape(*input_shape, -1).contiguous()
    return self.o_proj(out), None


def _mlp_forward(self, x):
    """HF <Family>MLP.forward with act_fn(gate) * up as the operator. The projections run on the
    [tokens, hidden] rows of x (a Linear folds its leading dimensions into the same matmul), so the
    operator gets its [tokens, width] inputs as they come and one view restores x's shape."""
    rows = x.reshape(-1, x.shape[-1])
    out = self._fk_slots["silu_and_mul"](self.gate_proj(rows), self.up_proj(rows))
    return self.down_proj(out).view_as(x)


def _experts_apply_gate(self, gate_up_out):
    """HF experts' gating (grouped_mm / batched_mm paths call it) with the operator."""
    gate, up = gate_up_out.chunk(2, dim=-1)
    return self._fk_slots["silu_and_mul"](gate.contiguous(), up.contiguous())


def _experts_eager_forward(self, hidden_states, top_k_index, top_k_weights):
    """HF <Family>Experts.forward (eager loop over the experts hit), gating through _apply_gate."""
    if self.config._experts_implementation not in (None, "eager"):
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit:
        e = expert[0]
        pos, token = torch.where(mask[e])
        gate_up = F.linear(hidden_states[token], self.gate_up_proj[e])
        cur = F.linear(self._apply_gate(gate_up), self.down_proj[e])
        cur = cur * top_k_weights[token, pos, None]
        final.index_add_(0, token, cur.to(final.dtype))
    return final


def _router_forward(self, hidden_states):
    """HF <Family>TopKRouter.forward with softmax/top-k/renormalise as the operator."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    logits = F.linear(hidden_states, self.weight)
    weights, indices = self._fk_slots["moe_router"](logits)
    return logits, weights, indices


MIRRORS = {
    "decoder_layer": {"forward": _decoder_layer_forward},
    "attention": {"forward": _attention_forward},
    "mlp": {"forward": _mlp_forward},
    "experts": {"_apply_gate": _experts_apply_gate, "forward": _experts_eager_forward},
    "router": {"forward": _router_forward},
}
# kind -> prepare(instance, slots): what its mirror reads of the instance, read once when bound
PREPARE = {"attention": _prepare_attention}


# ---- adapters for swapped submodules (their forward takes HF's arguments) ------------------------

def _adapt_rms_norm(site: Site, width: int):
    run = site.entry

    def forward(self, hidden_states):
        # The operator takes [tokens, hidden] (Qwen3's q/k norms: [tokens * heads, head_dim]).
        return run(hidden_states.reshape(-1, width)).view_as(hidden_states)

    return forward


def _adapt_attention_block(site: Site, layer_idx: int, kv_heads: int, head_dim: int):
    run = site.entry

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        cache = _pop_cache(kwargs)
        cos, sin = position_embeddings
        past_key, past_value = read_past(cache, layer_idx, hidden_states, kv_heads, head_dim)
        out, key, value = run(hidden_states, cos, sin, past_key, past_value)
        if cache is not None:
            cache.update(key, value, layer_idx)
        return out, None

    return forward


def _adapt_decoder_layer(site: Site, layer_idx: int, kv_heads: int, head_dim: int):
    run = site.entry

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        cache = _pop_cache(kwargs)
        cos, sin = position_embeddings
        past_key, past_value = read_past(cache, layer_idx, hidden_states, kv_heads, head_dim)
        out, key, value = run(hidden_states, cos, sin, past_key, past_value)
        if cache is not None:
            cache.update(key, value, layer_idx)
        return out

    return forward


def _causal_lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                       labels=None, use_cache=None, logits_to_keep=0, **kwargs):
    """HF <Family>ForCausalLM.forward computed by a level-4 implementation over the HF cache."""
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import CausalLMOutputWithPast

    slots = self._fk_slots
    cache = _pop_cache(kwargs)
    if input_ids is None or inputs_embeds is not None or labels is not None:
        raise TypeError("a level-4 implementation takes input_ids only (no inputs_embeds, no labels)")
    use_cache = self.config.use_cache if use_cache is None else use_cache
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    layers = self.config.num_hidden_layers
    past_keys = past_values = None
    if cache is not None and cache.get_seq_length() > 0:
        pasts = [read_past(cache, i, input_ids, slots["kv_heads"], slots["head_dim"]) for i in range(layers)]
        past_keys, past_values = [p[0] for p in pasts], [p[1] for p in pasts]
    logits, keys, values = slots["causal_lm"](input_ids, past_keys, past_values)
    if cache is not None:
        for i in range(layers):
            cache.update(keys[i], values[i], i)
    if isinstance(logits_to_keep, int) and logits_to_keep > 0:
        logits = logits[:, -logits_to_keep:]
    elif torch.is_tensor(logits_to_keep):
        logits = logits[:, logits_to_keep]
    field_name = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
    return CausalLMOutputWithPast(logits=logits, **{field_name: cache if use_cache else None})


# ---- the handle ---------------------------------------------------------------------------------

class PatchHandle:
    """What `patch` did to one model: `unpatch()` undoes it exactly; also a context manager."""

    def __init__(self, model: nn.Module, family: str, shadow: ShadowCheck) -> None:
        self.model = model
        self.family = family
        self.shadow = shadow
        self.implementations: list[Implementation] = []
        self.sites: list[Site] = []
        self.notes: list[str] = []
        self._undo: list[Callable[[], None]] = []
        self._bound: dict[int, tuple[nn.Module, str, dict]] = {}
        self.active = False

    # which operators went where
    @property
    def ops(self) -> list[str]:
        return [i.key for i in self.implementations]

    def sites_of(self, key: str) -> list[Site]:
        return [s for s in self.sites if s.key == key or s.key.endswith("/" + key)]

    # bookkeeping used by the binders
    def swap(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        old = parent._modules[name]
        parent._modules[name] = new
        self._undo.append(lambda: parent._modules.__setitem__(name, old))

    def set_attr(self, obj, attr: str, value) -> None:
        had = attr in obj.__dict__
        old = obj.__dict__.get(attr)

        def undo():
            if had:
                obj.__dict__[attr] = old
            else:
                obj.__dict__.pop(attr, None)

        obj.__dict__[attr] = value
        self._undo.append(undo)

    def slot(self, instance: nn.Module, kind: str, name: str, site: Site) -> None:
        """Route `name` of `instance` through `site`; the mirror forward of `kind` is bound once,
        with what it needs of `instance` that never changes read here, not at each call."""
        entry = self._bound.get(id(instance))
        if entry is None:
            slots = {"family": self.family, "hf": hf_module(self.family)}
            prepare = PREPARE.get(kind)
            if prepare is not None:
                prepare(instance, slots)
            self._bound[id(instance)] = entry = (instance, kind, slots)
            self.set_attr(instance, "_fk_slots", slots)
            for method, fn in MIRRORS[kind].items():
                self.set_attr(instance, method, types.MethodType(fn, instance))
        entry[2][name] = site.entry

    def unpatch(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._bound.clear()
        self.active = False

    def __enter__(self) -> "PatchHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()

    # the shadow check
    @contextlib.contextmanager
    def shadowing(self, phase: str = "forward"):
        """Shadow-check every patched call inside the block (needs patch(..., shadow=True))."""
        if not any(s.baseline is not None for s in self.sites):
            raise UsageError("this patch was made without shadow=True: no baselines to compare with")
        before = (self.shadow.enabled, self.shadow.phase)
        self.shadow.enabled, self.shadow.phase = True, phase
        try:
            yield self.shadow
        finally:
            self.shadow.enabled, self.shadow.phase = before

    def shadow_report(self) -> ShadowReport:
        return self.shadow.report(self.ops)


# ---- binders: one per operator -------------------------------------------------------------------

def hf_module(family: str):
    import importlib

    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def _hf_class(family: str, suffix: str):
    return getattr(hf_module(family), PREFIX[family] + suffix, None)


def _instances(model: nn.Module, family: str, suffix: str) -> list[tuple[str, nn.Module]]:
    cls = _hf_class(family, suffix)
    if cls is None:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, cls)]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def _head_dims(config) -> tuple[int, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_key_value_heads, head_dim


class _Ctx:
    """What a binder needs: the model, its family, the handle, and how to build a site."""

    def __init__(self, model, family, handle: PatchHandle, with_baseline: bool) -> None:
        self.model, self.family, self.handle, self.with_baseline = model, family, handle, with_baseline
        self.config = model.config

    def site(self, impl: Implementation, name: str, init: dict, weights: dict, device,
             normalize: Callable | None = None, consumed: tuple[int, ...] = ()) -> Site:
        what = f"{impl.key} at {name}"
        cand = _build(impl.cls, init, weights, device, what)
        base = None
        if self.with_baseline:
            task = impl.task()
            base = _build(getattr(task, task.CLASS_NAME), init, weights, device, f"baseline of {what}")
        site = Site(impl, name, cand, base, self.handle.shadow, normalize, consumed)
        self.handle.sites.append(site)
        return site


def _bind_rms_norm(ctx: _Ctx, impl: Implementation) -> int:
    n = 0
    for name, m in _instances(ctx.model, ctx.family, "RMSNorm"):
        init = {**impl.task().init_args(ctx.config), "hidden_size": m.weight.shape[0], "eps": m.variance_epsilon}
        site = ctx.site(impl, name, init, m.state_dict(), m.weight.device)
        forward = _adapt_rms_norm(site, m.weight.shape[0])
        ctx.handle.set_attr(site.candidate, "forward", types.MethodType(forward, site.candidate))
        ctx.handle.swap(*_parent(ctx.model, name), site.candidate)
        n += 1
    return n


def _bind_add_rms_norm(ctx: _Ctx, impl: Implementation) -> int:
    n = 0
    for name, layer in _instances(ctx.model, ctx.family, "DecoderLayer"):
        norm = layer.post_attention_layernorm
        init = {**impl.task().init_args(ctx.config), "hidden_size": norm.weight.shape[0], "eps": norm.variance_epsilon}
        site = ctx.site(impl, name + ".post_attention_layernorm", init, norm.state_dict(), norm.weight.device,
                        consumed=(0, 1))  # the attention output and the old residual
        ctx.handle.slot(layer, "decoder_layer", "add_rms_norm", site)
        n += 1
    return n


def _bind_attention_parts(slot: str):
    def bind(ctx: _Ctx, impl: Implementation) -> int:
        n = 0
        for name, attn in _instances(ctx.model, ctx.family, "Attention"):
            init = impl.task().init_args(ctx.config)
            if slot == "attention":
                init = {**init, "scaling": attn.scaling}
            consumed = (0, 1) if slot == "rotary_embedding" else (0,)  # q, k are rebound to the results
            site = ctx.site(impl, name, init, {}, _module_device(attn), consumed=consumed)
            ctx.handle.slot(attn, "attention", slot, site)
            n += 1
        return n

    return bind


def _bind_silu_and_mul(ctx: _Ctx, impl: Implementation) -> int:
    if getattr(ctx.config, "hidden_act", "silu") != "silu":
        raise UsageError(f"silu_and_mul: {ctx.family} uses {ctx.config.hidden_act!r}, not silu")
    n = 0
    for name, mlp in _instances(ctx.model, ctx.family, "MLP"):
        ctx.handle.slot(mlp, "mlp", "silu_and_mul", ctx.site(impl, name, {}, {}, _module_device(mlp), consumed=(0, 1)))
        n += 1
    for name, experts in _instances(ctx.model, ctx.family, "Experts"):
        ctx.handle.slot(experts, "experts", "silu_and_mul",
                        ctx.site(impl, name, {}, {}, _module_device(experts), consumed=(0, 1)))
        n += 1
    return n


def _bind_moe_router(ctx: _Ctx, impl: Implementation) -> int:
    n = 0
    for name, router in _instances(ctx.model, ctx.family, "TopKRouter"):
        init = impl.task().init_args(ctx.config)
        experts = router.weight.shape[0]
        site = ctx.site(impl, name, init, {}, router.weight.device,
                        normalize=lambda out, e=experts: _dense_routing(out, e))
        ctx.handle.slot(router, "router", "moe_router", site)
        n += 1
    return n


def _bind_embedding(ctx: _Ctx, impl: Implementation) -> int:
    emb = ctx.model.get_input_embeddings()
    name = next(n for n, m in ctx.model.named_modules() if m is emb)
    init = {**impl.task().init_args(ctx.config), "vocab_size": emb.weight.shape[0], "hidden_size": emb.weight.shape[1]}
    site = ctx.site(impl, name, init, emb.state_dict(), emb.weight.device)
    ctx.handle.set_attr(emb, "forward", site.entry)  # nn.Embedding's forward takes the ids alone, as the op does
    return 1


def _bind_swap(suffix: str, adapter: str):
    def bind(ctx: _Ctx, impl: Implementation) -> int:
        n = 0
        kv_heads, head_dim = _head_dims(ctx.config)
        for name, m in _instances(ctx.model, ctx.family, suffix):
            init = impl.task().init_args(ctx.config)
            site = ctx.site(impl, name, init, m.state_dict(), _module_device(m))
            if adapter == "same":  # the block's forward takes HF's argument as it is
                if site.baseline is not None:  # shadowed: through the site
                    ctx.handle.set_attr(site.candidate, "forward", site.entry)
            else:
                fwd = (_adapt_attention_block(site, m.layer_idx, kv_heads, head_dim) if adapter == "attention"
                       else _adapt_decoder_layer(site, m.self_attn.layer_idx, kv_heads, head_dim))
                ctx.handle.set_attr(site.candidate, "forward", types.MethodType(fwd, site.candidate))
            ctx.handle.swap(*_parent(ctx.model, name), site.candidate)
            n += 1
        return n

    return bind


def _bind_causal_lm(ctx: _Ctx, impl: Implementation) -> int:
    model = ctx.model
    init = impl.task().init_args(ctx.config)
    site = ctx.site(impl, "model", init, model.state_dict(), _module_device(model))
    kv_heads, head_dim = _head_dims(ctx.config)
    ctx.handle.set_attr(model, "_fk_slots", {"causal_lm": site.entry, "kv_heads": kv_heads, "head_dim": head_dim})
    ctx.handle.set_attr(model, "forward", types.MethodType(_causal_lm_forward, model))
    return 1


# op name -> binder(ctx, impl) -> number of call sites bound
BINDERS: dict[str, Callable[[_Ctx, Implementation], int]] = {
    # level 1
    "rms_norm": _bind_rms_norm,
    "add_rms_norm": _bind_add_rms_norm,
    "rotary_embedding": _bind_attention_parts("rotary_embedding"),
    "attention": _bind_attention_parts("attention"),
    "silu_and_mul": _bind_silu_and_mul,
    "moe_router": _bind_moe_router,
    "embedding": _bind_embedding,
    # level 2
    "attention_block": _bind_swap("Attention", "attention"),
    "mlp_block": _bind_swap("MLP", "same"),
    "moe_block": _bind_swap("SparseMoeBlock", "same"),
    # level 3
    "decoder_layer": _bind_swap("DecoderLayer", "decoder"),
    "moe_decoder_layer": _bind_swap("DecoderLayer", "decoder"),
    # level 4
    "causal_lm": _bind_causal_lm,
}


def tolerance(dtype) -> tuple[float, float]:
    """(rtol, atol) of the unit benchmark for outputs of `dtype` (atol in units of the output's RMS)."""
    from fastkernels.bench.unit import TOLERANCES

    tol = TOLERANCES.get(str(dtype).replace("torch.", ""))
    return (tol.rtol, tol.atol) if tol is not None else (0.0, 0.0)


def model_family(model: nn.Module) -> str:
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in PREFIX:
        raise UsageError(f"cannot patch a {family!r} model; supported families: {', '.join(PREFIX)}")
    return family


def patch(model: nn.Module, candidates, level: int | None = None, *, shadow: bool = False,
          only: Iterable[str] | None = None, strict: bool = False) -> PatchHandle:
    """Bind the implementations in `candidates` into this `model` instance and return the handle.

    candidates: a directory laid out like tasks/candidate (L{level}/{op}.py) or a dict
        {op or "L1/op": code string or path}. level: only that level (default: every level found).
    shadow: also build each operator's baseline and shadow-check every patched call until
        `handle.shadow.enabled = False` (or use `with handle.shadowing(phase):` selectively).
    only: bind just these operators ("L1/rms_norm" or "rms_norm"), e.g. for bisection.
    strict: an operator the model's family does not use is an error. By default it is skipped,
        its file not even imported, and named in `handle.notes` (a library directory holds the
        operators of every family); candidates none of which the family uses are an error.
    """
    if level is not None:
        from fastkernels.registry.tasks import check_level

        level = check_level(level)
    family = model_family(model)
    only = None if only is None else set(only)
    found = {}  # "L1/op" -> (1, "op"): what is there, nothing imported yet
    for key in find_candidates(candidates, level):
        lvl, _, op = key.partition("/")
        if only is None or key in only or op in only:
            found[key] = (int(lvl[1:]), op)
    unused = sorted((k for k, (lvl, op) in found.items() if family not in load_task(lvl, op).FAMILIES),
                    key=lambda k: (-found[k][0], k))  # the order implementations bind in
    if unused and (strict or len(unused) == len(found)):
        raise UsageError("; ".join(f"{k} is not used by {family} models" for k in unused))
    if isinstance(candidates, Mapping):
        def key_of(key) -> str:
            lvl_part, _, op = str(key).rpartition("/")
            return f"L{_level_of(op, int(lvl_part.lstrip('Ll')) if lvl_part else level)}/{op}"

        kept = {k: v for k, v in candidates.items() if key_of(k) not in unused}
    else:
        kept = {k: str(Path(candidates) / f"{k}.py") for k in found if k not in unused}
    impls = load_implementations(kept, level, only)
    if not impls:
        raise UsageError(f"no candidate implementations found in {candidates if not isinstance(candidates, Mapping) else 'the dict given'}"
                         + (f" at level {level}" if level else ""))
    handle = PatchHandle(model, family, ShadowCheck())
    handle.notes.extend(f"{k} is not used by {family} models" for k in unused)
    ctx = _Ctx(model, family, handle, with_baseline=shadow)
    try:
        for impl in impls:
            task = impl.task()
            if family not in task.FAMILIES:  # `unused` above kept it out
                raise UsageError(f"{impl.key} is not used by {family} models")
            binder = BINDERS.get(impl.op)
            if binder is None:
                raise UsageError(f"fastkernels has no binding for {impl.key} yet")
            handle.shadow.tolerances[impl.key] = tolerance(next(model.parameters()).dtype)
            count = binder(ctx, impl)
            if count == 0:
                handle.notes.append(f"{impl.key}: no call site left in this model (a higher level replaced them)")
            handle.implementations.append(impl)
    except BaseException:
        handle.unpatch()
        raise
    handle.active = True
    handle.shadow.enabled = shadow
    return handle
