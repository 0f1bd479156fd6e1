"""The child side of the end-to-end benchmark (fastkernels.measure.e2e runs these in sandboxed
children, by name): load the model, generate and score the baseline, the noise floor and each
candidate set, shadow-check and time them. Nothing here is imported by the parent."""

from __future__ import annotations

import contextlib
import gc
import json
import time
from dataclasses import asdict

from fastkernels.measure.e2e import (
    CPU_TIMING_NOTE,
    SHADOW_DECODE_STEPS,
    Timing,
    _median,
    bracketed,
    pair_ratios,
)
from fastkernels.sandbox import is_cuda_error


class _Progress:
    def __init__(self, path: str | None) -> None:
        self.path = path

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None:
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"stage": stage, "done": done, "total": total, "detail": detail}) + "\n")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kw(model) -> str:
    from fastkernels.registry.forwards import cache_kwarg

    return cache_kwarg(type(model))


def greedy(model, prompt, new_tokens: int):
    """Greedy generation with HF's dynamic cache: (tokens [B, T], Timing of this one run, all_finite)."""
    import torch
    from transformers.cache_utils import DynamicCache

    device = prompt.device
    kw = _cache_kw(model)
    cache = DynamicCache(config=model.config)
    finite = torch.ones((), dtype=torch.bool, device=device)
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        out = model(prompt, use_cache=True, logits_to_keep=1, **{kw: cache})
        logits = out.logits[:, -1]
        finite &= torch.isfinite(logits).all()
        nxt = logits.argmax(-1, keepdim=True)
        _sync(device)
        t1 = time.perf_counter()
        tokens = [nxt]
        for _ in range(new_tokens - 1):
            out = model(nxt, use_cache=True, **{kw: cache})
            logits = out.logits[:, -1]
            finite &= torch.isfinite(logits).all()
            nxt = logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
        _sync(device)
        t2 = time.perf_counter()
    steps = new_tokens - 1
    timing = Timing(prefill_ms=(t1 - t0) * 1e3, decode_tok_s=prompt.shape[0] * steps / max(t2 - t1, 1e-9), reps=1)
    return torch.cat(tokens, dim=1), timing, bool(finite)


# Timed runs per subject and candidate set; each is preceded by the same generation untimed, so
# the allocator, cuBLAS handles, Triton's first launch and any autotuning a kernel does at each new
# KV length it meets (a warm-up of a few tokens would leave later lengths to the timed run) stay out.
TIMING_REPS = 4
# The attention a user's model runs by default (transformers picks SDPA when nothing is asked
# for); the timed runs use it, the correctness runs keep the loaded model's eager attention.
TIMING_ATTENTION = "sdpa"


@contextlib.contextmanager
def attention_implementation(model, name: str | None):
    """Run the model with attention implementation `name` inside the block (None: as loaded)."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if not name or name == before:
        yield before
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if setter is not None:
            setter(name)
        else:
            config._attn_implementation = name
    except Exception:  # noqa: BLE001 - a model without it times what it has
        yield before
        return
    try:
        yield getattr(config, "_attn_implementation", name)
    finally:
        if setter is not None:
            setter(before)
        else:
            config._attn_implementation = before


def timed_generation(model, prompt, new_tokens: int) -> tuple[float, float]:
    """The generation once untimed (warm-up), then timed with Python's garbage collector held off:
    (prefill ms, decode tok/s)."""
    greedy(model, prompt, new_tokens)
    was = gc.isenabled()  # no gc.collect() first: a full collection costs 0.2 s with torch loaded
    gc.disable()
    try:
        _, t, _ = greedy(model, prompt, new_tokens)
    finally:
        if was:
            gc.enable()
    return t.prefill_ms, t.decode_tok_s


def teacher_forced(model, seq):
    import torch

    with torch.no_grad():
        return model(seq, use_cache=False).logits.float()


def compare_logits(logits, ref) -> tuple[float, float]:
    """(top-1 agreement, mean over positions of |logits - ref| / |ref|)."""
    import torch

    top1 = float((logits.argmax(-1) == ref.argmax(-1)).float().mean())
    rel = (logits - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
    rel = torch.nan_to_num(rel, nan=float("inf"))
    return top1, float(rel.mean())


def _token_match(a, b) -> float:
    return float((a == b).float().mean())


def _params_to(model, dtype) -> None:
    """Cast parameters only (rotary tables and other buffers keep their dtype: a round trip
    bf16 -> fp32 -> bf16 of the parameters is exact)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def _decoder_layers(model):
    """The model's stack of decoder layers: the ModuleList holding the most parameters."""
    import torch

    best, best_n = None, 0
    for m in model.modules():
        if isinstance(m, torch.nn.ModuleList) and len(m) > 1:
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = m, n
    return best


def _noise_floor_layerwise(model, mode: str = "auto") -> str:
    """Why the noise floor must cast one decoder layer at a time ("" when the whole model may go
    to fp32 at once). `mode`: "auto" (layerwise only where the fp32 copy does not fit the free GPU
    memory, e.g. one rank of Mixtral-8x7B at --tp 2 on an 80 GB card: 43.7 GiB of bf16 would
    need 87 GiB), "layerwise" or "whole"."""
    import torch

    if mode not in ("auto", "layerwise", "whole"):
        raise ValueError(f"noise_floor must be auto, layerwise or whole, not {mode!r}")
    if mode == "whole" or _decoder_layers(model) is None:
        return ""
    if mode == "layerwise":
        return "asked for"
    params = list(model.parameters())
    if not params or params[0].device.type != "cuda":
        return ""
    extra = sum(p.numel() * max(4 - p.element_size(), 0) for p in params)
    free, _ = torch.cuda.mem_get_info(params[0].device)
    headroom = 2 << 30  # fp32 activations, logits and the KV cache of the short generation
    if extra + headroom <= free:
        return ""
    return f"casting all of it needs {extra / 2**30:.1f} GiB more, {free / 2**30:.1f} GiB free"


@contextlib.contextmanager
def _fp32_parameters(model, dtype, layerwise: bool = False):
    """The model's parameters in fp32 inside the block, back in `dtype` after it (exactly: the
    round trip is lossless). Layerwise, everything outside the decoder layers goes to fp32 for the
    whole block and each decoder layer only while it runs (forward hooks), so at most one layer's
    fp32 copy exists at a time; the arithmetic is the same as casting everything at once."""
    import torch

    hooks = []
    layers = _decoder_layers(model) if layerwise else None
    try:
        if layers is None:
            _params_to(model, torch.float32)
        else:
            inside = {id(p) for p in layers.parameters()}
            for p in model.parameters():
                if id(p) not in inside:
                    p.data = p.data.to(torch.float32)
            for layer in layers:
                hooks.append(layer.register_forward_pre_hook(lambda m, a: _params_to(m, torch.float32)))
                hooks.append(layer.register_forward_hook(lambda m, a, o: _params_to(m, dtype)))
        yield
    finally:
        for h in hooks:
            h.remove()
        _params_to(model, dtype)


def _compiled_timing(model, prompt, new_tokens: int, reps: int, attention: str | None) -> Timing:
    """HF generate with a static cache (on a GPU it compiles the decoding forward), with the
    timing attention: compiled by a first call, then `reps` timed calls, prefill included."""
    import torch

    device = prompt.device
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  cache_implementation="static", pad_token_id=0)
    runs = []
    with torch.no_grad(), attention_implementation(model, attention) as used:
        model.generate(prompt, **kwargs)  # compiles
        model.generate(prompt, **kwargs)  # warm
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            model.generate(prompt, **kwargs)
            _sync(device)
            runs.append((None, prompt.shape[0] * new_tokens / (time.perf_counter() - t0)))
    tok = [t for _, t in runs]
    return Timing(decode_tok_s=_median(tok), decode_tok_s_min=min(tok), decode_tok_s_max=max(tok), reps=len(tok),
                  attention=used or "", note="HF generate, static cache, torch.compile'd forward; tok/s include the prefill")


def _setup(payload: dict):
    import torch

    from fastkernels.models.catalog import resolve
    from fastkernels.models.loading import load_model

    device = payload.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, payload.get("dtype") or "bfloat16")
    entry = resolve(payload["model"], payload["tiny"])
    if payload.get("tp", 1) > 1:  # one rank of a tensor-parallel run (fastkernels.measure.tp)
        from fastkernels.models.sharding import load_sharded

        loaded = load_sharded(entry, rank=payload["tp_rank"], world=payload["tp_world"], dtype=dtype, device=device,
                              seed=payload["seed"], from_meta=payload.get("tp_from_meta"))
    else:
        loaded = load_model(entry, dtype=dtype, device=device, seed=payload["seed"])
    gen = torch.Generator(device="cpu").manual_seed(payload["seed"] + 1)
    vocab = loaded.model.config.vocab_size
    prompt = torch.randint(0, vocab, (payload["batch"], payload["prompt_len"]), generator=gen).to(loaded.device)
    return loaded, prompt


def _e2e_job(payload: dict) -> dict:
    """The child: baseline, noise floor, then each candidate set (see the module docstring)."""
    import torch

    progress = _Progress(payload.get("progress_file"))
    sets: dict[str, dict] = payload["sets"]
    total = 4 + len(sets) * 4 + 1
    step = 0

    def tick(stage, detail=""):
        nonlocal step
        step += 1
        progress(stage, step, total, detail)

    torch.manual_seed(payload["seed"])
    tick("load", f"loading {payload['model']}{' (tiny)' if payload['tiny'] else ''}")
    loaded, prompt = _setup(payload)
    model, device = loaded.model, loaded.device
    new_tokens = payload["new_tokens"]
    notes = []
    if device.type != "cuda":
        notes.append(CPU_TIMING_NOTE)

    tick("baseline", "baseline: greedy generation and teacher-forced logits")
    greedy(model, prompt, 2)  # warm-up: allocator, kernels' first launch
    base_tokens, _, base_finite = greedy(model, prompt, new_tokens)
    seq = torch.cat([prompt, base_tokens], dim=1)
    base_logits = teacher_forced(model, seq)
    if not base_finite or not bool(torch.isfinite(base_logits).all()):
        notes.append("the baseline itself produces NaN/Inf on these inputs")

    layerwise = _noise_floor_layerwise(model, payload.get("noise_floor", "auto"))
    tick("noise floor", "baseline with fp32 parameters" + (", one decoder layer at a time" if layerwise else ""))
    if layerwise:
        notes.append(f"noise floor: fp32 parameters one decoder layer at a time ({layerwise})")
    with _fp32_parameters(model, loaded.dtype, layerwise=bool(layerwise)):
        fp32_tokens, _, _ = greedy(model, prompt, new_tokens)
        fp32_logits = teacher_forced(model, seq)
    noise_top1, noise_err = compare_logits(base_logits, fp32_logits)
    noise_match = _token_match(fp32_tokens, base_tokens)
    del fp32_logits

    # Timing: every figure is the median of several timed generations, each after its own warm-up,
    # and the baseline is timed in the same rounds as what it is compared with (AB, BA, ...).
    reps = int(payload.get("timing_reps") or (TIMING_REPS if device.type == "cuda" else 2))
    attention = payload.get("timing_attention", TIMING_ATTENTION)
    budget = payload.get("timing_budget_s")
    # Under --tp every rank runs this same schedule in lockstep: no clock-dependent decisions there.
    timing_end = time.monotonic() + budget if budget and int(payload.get("tp", 1)) == 1 else None
    brackets_left = [1 + len(sets)]

    def share() -> float | None:
        """This bracket's deadline: an equal share of what is left of the timing budget."""
        if timing_end is None:
            return None
        left = max(brackets_left[0], 1)
        brackets_left[0] -= 1
        return time.monotonic() + max(timing_end - time.monotonic(), 0.0) / left

    def run_baseline():
        with attention_implementation(model, attention):
            return timed_generation(model, prompt, new_tokens)

    def run_eager_attention():
        with attention_implementation(model, "eager"):
            return timed_generation(model, prompt, new_tokens)

    with attention_implementation(model, attention) as used:
        used_attention = used or ""
    base_runs: list[tuple[float, float]] = []
    timings_base = {}
    reference = payload.get("timing_reference")
    if reference is None:
        reference = device.type == "cuda"  # on a CPU the figures mean nothing: fewer runs
    if used_attention != "eager" and reference:
        tick("baseline timing", f"HF model: {used_attention} attention beside eager attention")
        runs = bracketed({"baseline": run_baseline, "eager_attention": run_eager_attention}, max(2, reps // 2),
                         deadline=share())
        base_runs += runs["baseline"]
        timings_base["baseline_eager_attention"] = asdict(Timing.of(
            runs["eager_attention"], "HF model as loaded for the correctness checks (eager attention)", "eager"))
    else:
        brackets_left[0] -= 1  # no reference bracket: its share goes to the sets
        tick("baseline timing", f"HF model ({used_attention} attention)")

    common = {"weights": loaded.weights, "device": str(device), "dtype": str(loaded.dtype).replace("torch.", ""),
              "prompt_len": payload["prompt_len"], "new_tokens": new_tokens, "batch": payload["batch"],
              "seed": payload["seed"], "token_match_noise": noise_match, "top1_agreement_noise": noise_top1,
              "logit_rel_error_noise": noise_err}
    results = {}
    for name, codes in sets.items():
        result = {**common, "notes": list(notes), "timings": dict(timings_base)}
        results[name] = result
        tick("patch", f"{name}: binding {len(codes)} kernel(s)")
        try:
            _measure_set(model, name, codes, payload, prompt, seq, base_tokens, base_logits, result, tick,
                         run_baseline, reps, attention, used_attention, base_runs, share)
        except Exception as exc:  # noqa: BLE001 - what a candidate raises is this set's result
            text = f"{type(exc).__name__}: {exc}".strip()
            if is_cuda_error(text):
                raise  # the context is poisoned: the parent reruns each set in its own child
            import traceback

            result["error"] = text.splitlines()[0][:500]
            result["notes"].append("traceback (last lines): " + " | ".join(
                ln.strip() for ln in traceback.format_exc().strip().splitlines()[-6:]))
        if payload.get("partial_file") and int(payload.get("tp_rank", 0)) == 0:
            snapshot = {**result, "timings": {**result["timings"], "baseline_eager": asdict(Timing.of(
                base_runs, "HF model, not compiled: the runs so far", used_attention))}}
            with open(payload["partial_file"], "a") as fh:
                fh.write(json.dumps({"set": name, "result": snapshot}) + "\n")
    if not base_runs:  # every set failed before its timing: the baseline alone
        base_runs = bracketed({"baseline": run_baseline}, reps)["baseline"]
    # The baseline figure: all its timed runs, from every round it was part of.
    baseline_eager = asdict(Timing.of(base_runs, f"HF model, not compiled, {used_attention} attention "
                                      f"(median of {len(base_runs)} timed runs bracketing the others)", used_attention))
    for result in results.values():
        result["timings"]["baseline_eager"] = baseline_eager

    compile_baseline = payload.get("compile_baseline")
    tp = int(payload.get("tp", 1))
    if compile_baseline is None:
        # Under --tp every rank would compile its own graph around the all-reduces, in lockstep;
        # one rank failing to compile leaves the other waiting in a collective: off by default.
        compile_baseline = device.type == "cuda" and tp == 1
    tick("compiled baseline", "HF generate with a static cache (torch.compile)" if compile_baseline
         else "skipped" + (" under --tp" if tp > 1 else ""))
    if not compile_baseline and tp > 1 and device.type == "cuda":
        for result in results.values():
            result["notes"].append("HF compiled baseline not run under --tp (each rank would compile in lockstep)")
    if compile_baseline:
        try:
            compiled = asdict(_compiled_timing(model, prompt, new_tokens, reps, attention))
        except Exception as exc:  # noqa: BLE001 - a baseline that cannot compile is a note, not a failure
            compiled = asdict(Timing(note=f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
        for result in results.values():
            result["timings"]["baseline_compiled"] = compiled
    return {"sets": results}


def _measure_set(model, name, codes, payload, prompt, seq, base_tokens, base_logits, result, tick,
                 run_baseline, reps, attention, used_attention, base_runs, share):
    """Patch one candidate set, shadow-check it, measure it, unpatch; then time it against the
    baseline in bracketed rounds; fills `result`."""
    import torch
    from transformers.cache_utils import DynamicCache

    from fastkernels.registry.patching import patch

    handle = patch(model, codes, payload["level"], shadow=True, only=payload.get("only"))
    result["notes"] += handle.notes
    try:
        tick("shadow check", f"{name}: every patched op beside its baseline, prefill and decode")
        kw = _cache_kw(model)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            with handle.shadowing("prefill"):
                out = model(prompt, use_cache=True, **{kw: cache})
            nxt = out.logits[:, -1:].argmax(-1)
            for i in range(SHADOW_DECODE_STEPS):
                with handle.shadowing(f"decode step {i + 1}"):
                    out = model(nxt, use_cache=True, **{kw: cache})
                nxt = out.logits[:, -1:].argmax(-1)
        handle.shadow.enabled = False
        result["shadow"] = handle.shadow_report().to_dict()

        tick("patched", f"{name}: greedy generation and teacher-forced logits")
        greedy(model, prompt, 2)  # warm-up: Triton compiles each kernel at its first launch
        tokens, _, finite = greedy(model, prompt, payload["new_tokens"])
        logits = teacher_forced(model, seq)
        finite = finite and bool(torch.isfinite(logits).all())
        top1, err = compare_logits(logits, base_logits)
        result.update(token_match=_token_match(tokens, base_tokens), top1_agreement=top1,
                      logit_rel_error=err, has_nan=not finite)
    finally:
        handle.unpatch()

    def run_patched():
        # Bound without the shadow check's baselines, as a user binds kernels.
        timed = patch(model, codes, payload["level"], only=payload.get("only"))
        try:
            with attention_implementation(model, attention):
                return timed_generation(model, prompt, payload["new_tokens"])
        finally:
            timed.unpatch()

    tick("timing", f"{name}: {reps} rounds of baseline and patched, alternating who goes first")
    runs = bracketed({"baseline": run_baseline, "patched": run_patched}, reps, deadline=share())
    base_runs += runs["baseline"]
    result["timings"]["patched"] = asdict(Timing.of(runs["patched"], "patched model, not compiled", used_attention))
    result["timings"]["baseline_this_set"] = asdict(Timing.of(
        runs["baseline"], "the baseline's runs in the rounds with this set (what the speedup divides by)", used_attention))
    result.update(pair_ratios(runs["baseline"], runs["patched"]))


def _probe_job(payload: dict) -> dict:
    """The child of one bisection probe: a short patched run of the subset `only` (prefill and
    two decode steps, then a teacher-forced pass). Raises what the kernels raise."""
    import torch

    from fastkernels.registry.patching import patch

    loaded, prompt = _setup(payload)
    model = loaded.model
    (codes,) = payload["sets"].values()
    codes = {k: v for k, v in codes.items() if k in set(payload["only"])}
    handle = patch(model, codes, payload["level"]) if codes else None
    try:
        tokens, _, finite = greedy(model, prompt, SHADOW_DECODE_STEPS + 1)
        logits = teacher_forced(model, torch.cat([prompt, tokens], dim=1))
    finally:
        if handle is not None:
            handle.unpatch()
    if not finite:
        return {"nan": "during generation"}
    if not bool(torch.isfinite(logits).all()):
        return {"nan": "in teacher-forced logits"}
    return {"nan": None}


