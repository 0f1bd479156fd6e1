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
(`fastkernels.rules.tolerance`, one definition): an element passes when
|candidate - baseline| <= atol * rms(baseline) + rtol * |baseline|; a call that exceeds it is judged
as the unit benchmark judges, against the baseline run in fp32: within the same tolerance of it, or
no worse than twice the baseline's own error (deep blocks in bf16).

The transformers version matters in one place: 5.24 names the cache argument `cache`, 5.17
`past_key_values`. Our forwards accept both (a decoder layer hands the model's keyword arguments to
its attention as they came).

Beside this module: the call sites, the forwards bound on HF instances and the adapters
(fastkernels.registry.forwards), reading candidates (fastkernels.registry.candidates), the shadow
check (fastkernels.registry.shadow).
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path
from typing import Callable, Iterable, Mapping

from torch import nn

from fastkernels.errors import UsageError
from fastkernels.models.hf import FAMILY_PREFIX, hf_class, hf_module
from fastkernels.registry.candidates import (
    Implementation,
    find_candidates,
    level_of,
    load_implementations,
)
from fastkernels.registry.forwards import (
    MIRRORS,
    PREPARE,
    Site,
    adapt_attention_block,
    adapt_decoder_layer,
    adapt_rms_norm,
    build_module,
    causal_lm_forward,
    dense_routing,
    module_device,
)
from fastkernels.registry.shadow import ShadowCheck, ShadowReport
from fastkernels.registry.tasks import (
    load_task,
)
from fastkernels.rules.tolerance import tolerance_for

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

def _hf_class(family: str, suffix: str):
    return hf_class(family, suffix, None)


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
        cand = build_module(impl.cls, init, weights, device, what)
        base = None
        if self.with_baseline:
            task = impl.task()
            base = build_module(getattr(task, task.CLASS_NAME), init, weights, device, f"baseline of {what}")
        site = Site(impl, name, cand, base, self.handle.shadow, normalize, consumed)
        self.handle.sites.append(site)
        return site


def _bind_rms_norm(ctx: _Ctx, impl: Implementation) -> int:
    n = 0
    for name, m in _instances(ctx.model, ctx.family, "RMSNorm"):
        init = {**impl.task().init_args(ctx.config), "hidden_size": m.weight.shape[0], "eps": m.variance_epsilon}
        site = ctx.site(impl, name, init, m.state_dict(), m.weight.device)
        forward = adapt_rms_norm(site, m.weight.shape[0])
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
            site = ctx.site(impl, name, init, {}, module_device(attn), consumed=consumed)
            ctx.handle.slot(attn, "attention", slot, site)
            n += 1
        return n

    return bind


def _bind_silu_and_mul(ctx: _Ctx, impl: Implementation) -> int:
    if getattr(ctx.config, "hidden_act", "silu") != "silu":
        raise UsageError(f"silu_and_mul: {ctx.family} uses {ctx.config.hidden_act!r}, not silu")
    n = 0
    for name, mlp in _instances(ctx.model, ctx.family, "MLP"):
        ctx.handle.slot(mlp, "mlp", "silu_and_mul", ctx.site(impl, name, {}, {}, module_device(mlp), consumed=(0, 1)))
        n += 1
    for name, experts in _instances(ctx.model, ctx.family, "Experts"):
        ctx.handle.slot(experts, "experts", "silu_and_mul",
                        ctx.site(impl, name, {}, {}, module_device(experts), consumed=(0, 1)))
        n += 1
    return n


def _bind_moe_router(ctx: _Ctx, impl: Implementation) -> int:
    n = 0
    for name, router in _instances(ctx.model, ctx.family, "TopKRouter"):
        init = impl.task().init_args(ctx.config)
        experts = router.weight.shape[0]
        site = ctx.site(impl, name, init, {}, router.weight.device,
                        normalize=lambda out, e=experts: dense_routing(out, e))
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
            site = ctx.site(impl, name, init, m.state_dict(), module_device(m))
            if adapter == "same":  # the block's forward takes HF's argument as it is
                if site.baseline is not None:  # shadowed: through the site
                    ctx.handle.set_attr(site.candidate, "forward", site.entry)
            else:
                fwd = (adapt_attention_block(site, m.layer_idx, kv_heads, head_dim) if adapter == "attention"
                       else adapt_decoder_layer(site, m.self_attn.layer_idx, kv_heads, head_dim))
                ctx.handle.set_attr(site.candidate, "forward", types.MethodType(fwd, site.candidate))
            ctx.handle.swap(*_parent(ctx.model, name), site.candidate)
            n += 1
        return n

    return bind


def _bind_causal_lm(ctx: _Ctx, impl: Implementation) -> int:
    model = ctx.model
    init = impl.task().init_args(ctx.config)
    site = ctx.site(impl, "model", init, model.state_dict(), module_device(model))
    kv_heads, head_dim = _head_dims(ctx.config)
    ctx.handle.set_attr(model, "_fk_slots", {"causal_lm": site.entry, "kv_heads": kv_heads, "head_dim": head_dim})
    ctx.handle.set_attr(model, "forward", types.MethodType(causal_lm_forward, model))
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


def model_family(model: nn.Module) -> str:
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in FAMILY_PREFIX:
        raise UsageError(f"cannot patch a {family!r} model; supported families: {', '.join(FAMILY_PREFIX)}")
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
            return f"L{level_of(op, int(lvl_part.lstrip('Ll')) if lvl_part else level)}/{op}"

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
            handle.shadow.tolerances[impl.key] = tolerance_for(next(model.parameters()).dtype)
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
