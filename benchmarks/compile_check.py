"""The library's L1 and L2 kernels under torch.compile(fullgraph=True) (Inductor) and in CUDA graphs
match their eager runs, at Llama-3.1-8B layer shapes (the registry's full-size prefill of 4096
tokens and decode over a 4096-token cache, bf16), and a tiny Llama patched with them compiles with
mode="reduce-overhead" (Inductor + CUDA graphs) and keeps the unpatched model's logits and greedy
tokens through HF's own static-cache compile path. Run on the GPU machine from the repository root:

    PYTHONPATH=. python3 benchmarks/compile_check.py --out $OUT/compile_check.json

Per operator and shape it runs the library module (weights of the baseline with seed 0, the
registry's seeded inputs) three ways: eager, the eager module captured into a torch.cuda.CUDAGraph
and replayed, and torch.compile(mode="reduce-overhead", fullgraph=True) (Inductor, which compiles
the kernels itself, then CUDA graphs) called three times. Each output is compared with eager by the unit benchmark's bf16
rule (|x - eager| <= 2e-2 * rms(eager) + 2e-2 * |eager|), and its largest difference is reported.
Exit status 0 when every row passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fastkernels.registry import build_spec  # noqa: E402
from fastkernels.registry.tasks import build_baseline, build_inputs, library_dir, load_module  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TINY = "meta-llama/Llama-3.2-1B-Instruct"
OPS = [(1, "rms_norm"), (1, "add_rms_norm"), (1, "rotary_embedding"), (1, "silu_and_mul"), (1, "embedding"),
       (1, "attention"), (2, "mlp_block"), (2, "attention_block")]


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def _diff(got, want) -> tuple[bool, float]:
    """(within the bf16 rule, largest |got - want| over all outputs)."""
    ok, worst = True, 0.0
    for a, b in zip(_flat(got), _flat(want), strict=True):
        if not b.is_floating_point():
            ok &= bool(torch.equal(a, b))
            continue
        a, b = a.float(), b.float()
        err = (a - b).abs()
        ok &= bool(torch.isfinite(a).all()) and bool((err <= 2e-2 * b.pow(2).mean().sqrt() + 2e-2 * b.abs()).all())
        worst = max(worst, float(err.max()))
    return ok, worst


def _graphed(module, inputs):
    """The eager module captured in a CUDA graph (after two warm-up calls on a side stream) and replayed."""
    static = [x.clone() for x in inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            module(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = module(*static)
    graph.replay()
    torch.cuda.synchronize()
    return [o.clone() for o in _flat(out)]


@torch.no_grad()
def check_op(level: int, op: str) -> list[dict]:
    spec = build_spec(level, op, MODEL, tiny=False)
    cls = getattr(load_module(library_dir(level) / f"{op}.py"), spec.class_name)
    rows = []
    for shape in spec.shapes:
        base = build_baseline(spec, shape, "bfloat16", "cuda", seed=0)
        mod = cls(**spec.init_args_for(shape)).to("cuda", torch.bfloat16).eval()
        mod.load_state_dict(base.state_dict())
        inputs = build_inputs(spec, shape, "bfloat16", "cuda", seed=1)
        eager = [o.clone() for o in _flat(mod(*inputs))]
        row = {"op": f"L{level}/{op}", "shape": shape}
        for way in ("cuda_graph", "reduce_overhead"):
            t0 = time.perf_counter()
            try:
                torch._dynamo.reset()
                if way == "cuda_graph":
                    out = _graphed(mod, inputs)
                else:
                    fn = torch.compile(mod, fullgraph=True, dynamic=False, mode="reduce-overhead")
                    for _ in range(3):
                        out = [o.clone() for o in _flat(fn(*inputs))]
                torch.cuda.synchronize()
                ok, worst = _diff(out, eager)
                row[way] = {"ok": ok, "max_abs_diff": worst, "s": round(time.perf_counter() - t0, 1)}
            except Exception as exc:  # noqa: BLE001 - a failure is a row of the report
                row[way] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
                traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


@torch.no_grad()
def check_tiny_model(level: int) -> dict:
    """A tiny Llama patched with the library at `level`, compiled mode="reduce-overhead"
    (fullgraph), against the unpatched model: prefill logits, and HF generate's tokens through its
    own static-cache compile path (attention in its static-cache form at L1)."""
    import fastkernels
    from fastkernels.models.catalog import resolve
    from fastkernels.models.loading import load_model

    row = {"model": f"{TINY} (tiny)", "level": level}
    try:
        torch._dynamo.reset()
        model = load_model(resolve(TINY, tiny=True), dtype=torch.bfloat16, device="cuda", seed=0).model.eval()
        model.set_attn_implementation("sdpa")
        ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0)).cuda()
        want = model(ids, use_cache=False).logits
        kwargs = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, cache_implementation="static",
                      pad_token_id=0)
        want_tokens = model.generate(ids[:1], **kwargs)
        handle = fastkernels.patch(model, str(library_dir(1).parent), level=level)
        row["ops"] = handle.ops
        eager = model(ids, use_cache=False).logits
        fn = torch.compile(model, fullgraph=True, dynamic=False, mode="reduce-overhead")
        for _ in range(3):
            got = fn(ids, use_cache=False).logits.clone()
        row["logits_vs_patched_eager"] = _diff(got, eager)
        row["logits_vs_unpatched"] = _diff(got, want)
        from transformers import CompileConfig

        tokens = model.generate(ids[:1], compile_config=CompileConfig(fullgraph=True), **kwargs)
        tokens = model.generate(ids[:1], compile_config=CompileConfig(fullgraph=True), **kwargs)
        row["generate_tokens_match"] = bool(torch.equal(tokens, want_tokens))
        row["ok"] = row["logits_vs_patched_eager"][0] and row["logits_vs_unpatched"][0] and row["generate_tokens_match"]
        handle.unpatch()
    except Exception as exc:  # noqa: BLE001
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        traceback.print_exc()
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="compile_check.json")
    ap.add_argument("--ops", default=",".join(f"L{lv}/{op}" for lv, op in OPS))
    ap.add_argument("--no-tiny", action="store_true")
    args = ap.parse_args()
    wanted = set(args.ops.split(",")) if args.ops else set()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ops": [], "tiny": []}
    import triton
    import transformers

    result["triton"], result["transformers"] = triton.__version__, transformers.__version__
    out = Path(args.out)
    for level, op in OPS:
        if f"L{level}/{op}" in wanted:
            result["ops"] += check_op(level, op)
            out.write_text(json.dumps(result, indent=1))
    if not args.no_tiny:
        for level in (1, 2):
            result["tiny"].append(check_tiny_model(level))
            out.write_text(json.dumps(result, indent=1))
    rows = [r[w] for r in result["ops"] for w in ("cuda_graph", "reduce_overhead")] + result["tiny"]
    ok = all(r.get("ok") for r in rows)
    print("ALL OK" if ok else "SOME FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
