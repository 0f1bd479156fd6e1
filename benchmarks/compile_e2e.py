"""Compiled against compiled, end to end: HF `generate` with a static cache and transformers' own
torch.compile of the decoding forward (CompileConfig(fullgraph=True), mode "reduce-overhead":
Inductor + CUDA graphs) for the unpatched model and for the model patched with the L1 library, then
the same for the L2 library, side by side in one run. Run on the GPU machine from the repository root:

    PYTHONPATH=. python3 benchmarks/compile_e2e.py --out $OUT/compile_e2e

Llama-3.1-8B's shape with seeded random weights (fastkernels.models.loading, no download), batch 1,
a 128-token prompt, 128 new tokens, bf16, SDPA attention in every model. Each phase holds the
baseline and one patched copy (an L2-patched model holds its blocks' weights twice: three 8B models
at once would not leave room), compiles both by two warm-up generates each, then times `--rounds`
rounds, the two models alternating (order flipped every round). Per generate, a logits processor
stamps the first token (one synchronize): prefill = prompt tokens / (first token - start), decode =
127 tokens / (end - first token); medians with min-max. HF's prefill runs eagerly in this path (it
compiles the decoding forward only). A second, shorter line: the same models in eager `generate`
(static cache, compile disabled, 32 new tokens). Then one profiled compiled generate per model
(16 new tokens): GPU time by kernel.

The L1 set has every L1 library operator, attention in its static-cache form (the whole buffers and
this step's slots: decode is the library's split-K kernel bounded on the device). `--tiny` runs the
same on the tiny Llama on a CPU (aot_eager, interpreter) as a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
L1_OPS = ["rms_norm", "add_rms_norm", "rotary_embedding", "silu_and_mul", "embedding", "attention"]
SETS = {"L1": (1, L1_OPS), "L2": (2, None), "L2-mlp": (2, ["mlp_block"])}


class Stamp:
    """A logits processor that records when the first new token's logits are ready."""

    def __init__(self, device):
        self.device, self.first = device, None

    def __call__(self, input_ids, scores):
        if self.first is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.first = time.perf_counter()
        return scores


def build(tiny: bool, device, seed: int = 0):
    from fastkernels.models.catalog import resolve
    from fastkernels.models.loading import load_model

    model = load_model(resolve(MODEL, tiny=tiny), dtype=torch.bfloat16, device=device, seed=seed).model.eval()
    model.set_attn_implementation("sdpa")
    return model


def patched(name: str, tiny: bool, device):
    import fastkernels
    from fastkernels.registry.tasks import library_dir

    level, only = SETS[name]
    model = build(tiny, device)
    handle = fastkernels.patch(model, str(library_dir(1).parent), level=level, only=only)
    return model, handle.ops


def timed_generate(model, prompt, new: int, compiled: bool, tiny: bool) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s) of one greedy generate with a static cache."""
    from transformers import CompileConfig, LogitsProcessorList

    device = prompt.device
    stamp = Stamp(device)
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static",
                  pad_token_id=0, logits_processor=LogitsProcessorList([stamp]))
    if compiled:
        cfg = CompileConfig(fullgraph=True, backend="aot_eager" if tiny else "inductor")
        if tiny:  # HF compiles on GPUs only unless told
            cfg._compile_all_devices = True
        kwargs["compile_config"] = cfg
    else:
        kwargs["disable_compile"] = True
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    assert out.shape[1] == prompt.shape[1] + new
    return prompt.shape[1] / (stamp.first - t0), (new - 1) / (t1 - stamp.first), out


def summary_of(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def profile_decode(model, prompt, tiny: bool, top: int = 12) -> list[dict]:
    """GPU time by kernel over one compiled generate of 16 new tokens (prefill included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed_generate(model, prompt, 16, True, tiny)
    rows = []
    for ev in prof.key_averages():
        dev = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
        if dev and ev.device_type == torch.autograd.DeviceType.CUDA:
            rows.append({"kernel": ev.key[:90], "calls": ev.count, "us": dev})
    rows.sort(key=lambda r: -r["us"])
    total = sum(r["us"] for r in rows)
    return [{"kernel": "(all kernels)", "calls": sum(r["calls"] for r in rows), "us": total}] + rows[:top]


class Hints(logging.Handler):
    """Inductor's perf hints about CUDA graphs ("skipping cudagraphs due to ..."): a compiled decode
    step that is not replayed as a graph pays every launch on the host."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "cudagraph" in msg.lower() and len(self.lines) < 20:
            self.lines.append(msg[:300])


HINTS = Hints()


def teacher_forced(base, model, prompt) -> dict:
    """The patched model's logits against the baseline's on the same tokens (one eager forward of
    the prompt, no cache): where greedy decoding of random weights parts ways at a near-tie, this
    says whether the kernels or the tie did it. `near_ties`: positions whose baseline top-2 margin
    is below the largest logit difference (a flip there is rounding, not a bug)."""
    with torch.no_grad():
        a = base(prompt, use_cache=False).logits[0].float()
        b = model(prompt, use_cache=False).logits[0].float()
    diff = (a - b).abs()
    top2 = a.topk(2, dim=-1).values
    margin = top2[:, 0] - top2[:, 1]
    return {"positions": a.shape[0], "top1_agree": round((a.argmax(-1) == b.argmax(-1)).float().mean().item(), 4),
            "max_abs": round(diff.max().item(), 4), "mean_abs": round(diff.mean().item(), 5),
            "logit_std": round(a.std().item(), 4), "near_ties": int((margin < diff.max(-1).values).sum().item())}


def run_phase(name: str, base, prompt, args, device, log) -> dict:
    phase = {"set": name}
    try:
        model, ops = patched(name, args.tiny, device)
    except Exception as exc:  # noqa: BLE001 - a set that cannot be built is a row of the result
        phase["error"] = f"patch: {type(exc).__name__}: {exc}"
        return phase
    phase["ops"] = ops
    models = {"baseline": base, name: model}
    try:
        phase["logits"] = teacher_forced(base, model, prompt)
        log(f"{name}: teacher-forced logits {phase['logits']}")
        t0 = time.perf_counter()
        for label, m in models.items():
            for _ in range(2):  # the first compiles, the second records the CUDA graphs
                _, _, out = timed_generate(m, prompt, args.new, True, args.tiny)
            phase.setdefault("tokens", {})[label] = out[0, prompt.shape[1]:].tolist()
        phase["compile_and_warmup_s"] = round(time.perf_counter() - t0, 1)
        phase["cudagraph_hints"], HINTS.lines = HINTS.lines, []
        log(f"{name}: compiled and warm in {phase['compile_and_warmup_s']} s")
        phase["tokens_match"] = phase["tokens"]["baseline"] == phase["tokens"][name]
        res = {label: {"prefill": [], "decode": []} for label in models}
        started = time.perf_counter()
        for r in range(args.rounds):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for label in order:
                p, d, _ = timed_generate(models[label], prompt, args.new, True, args.tiny)
                res[label]["prefill"].append(p)
                res[label]["decode"].append(d)
            if time.perf_counter() - started > args.budget_s:
                break
        phase["compiled"] = {label: {k: summary_of(v) for k, v in r.items()} for label, r in res.items()}
        eager = {label: {"prefill": [], "decode": []} for label in models}
        for r in range(args.eager_rounds):
            for label in (list(models) if r % 2 == 0 else list(models)[::-1]):
                p, d, _ = timed_generate(models[label], prompt, args.eager_new, False, args.tiny)
                eager[label]["prefill"].append(p)
                eager[label]["decode"].append(d)
        phase["eager"] = {label: {k: summary_of(v) for k, v in r.items()} for label, r in eager.items()}
        if device.type == "cuda" and not args.no_profile:
            phase["profile"] = {label: profile_decode(m, prompt, args.tiny) for label, m in models.items()}
    except Exception as exc:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        phase["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
    del models, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return phase


def _fmt(s: dict) -> str:
    return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def write_summary(result: dict, path: Path) -> None:
    lines = [f"# Compiled vs compiled end to end ({result['model']})", "",
             f"`{result['command']}`", "",
             f"{result['device']}, torch {result['torch']}, triton {result['triton']}, transformers "
             f"{result['transformers']}. Batch 1, prompt {result['prompt']}, {result['new']} new tokens, bf16, "
             "static cache, HF generate with CompileConfig(fullgraph=True) (Inductor, reduce-overhead); "
             "medians (min-max) over interleaved rounds. Prefill runs eagerly in this HF path.", ""]
    for ph in result["phases"]:
        name = ph["set"]
        lines.append(f"## {name}: {', '.join(ph.get('ops', []))}")
        if "compiled" in ph:
            b, p = ph["compiled"]["baseline"], ph["compiled"][name]
            lines += ["", "| | decode tok/s | prefill tok/s |", "|---|---|---|",
                      f"| baseline compiled | {_fmt(b['decode'])} | {_fmt(b['prefill'])} |",
                      f"| {name} compiled | {_fmt(p['decode'])} | {_fmt(p['prefill'])} |",
                      f"| ratio (medians) | {p['decode']['median'] / b['decode']['median']:.3f}x | "
                      f"{p['prefill']['median'] / b['prefill']['median']:.3f}x |"]
        if "eager" in ph:
            b, p = ph["eager"]["baseline"], ph["eager"][name]
            lines += [f"| baseline eager ({result['eager_new']} tokens) | {_fmt(b['decode'])} | {_fmt(b['prefill'])} |",
                      f"| {name} eager | {_fmt(p['decode'])} | {_fmt(p['prefill'])} |",
                      f"| eager ratio | {p['decode']['median'] / b['decode']['median']:.3f}x | "
                      f"{p['prefill']['median'] / b['prefill']['median']:.3f}x |"]
        if "logits" in ph:
            t = ph["logits"]
            lines += ["", f"Teacher-forced logits over the prompt's {t['positions']} positions (eager, patched vs "
                      f"baseline): top-1 agree {t['top1_agree']:.4f}, max |diff| {t['max_abs']}, mean |diff| "
                      f"{t['mean_abs']} (logit std {t['logit_std']}); {t['near_ties']} positions have a top-2 "
                      "margin below the largest difference."]
        if ph.get("cudagraph_hints"):
            lines += ["", "Inductor's CUDA-graph hints while compiling (baseline and patched):", ""]
            lines += [f"- `{h}`" for h in ph["cudagraph_hints"]]
        if "tokens_match" in ph:
            lines += ["", f"Greedy tokens equal to the baseline's: {ph['tokens_match']}; compile + warm-up "
                      f"{ph.get('compile_and_warmup_s')} s."]
        if "error" in ph:
            lines += ["", f"Error: `{ph['error']}`"]
        for label, rows in ph.get("profile", {}).items():
            lines += ["", f"GPU time by kernel, {label}, one compiled generate of 16 tokens:", "",
                      "| kernel | calls | us |", "|---|---|---|"]
            lines += [f"| `{r['kernel']}` | {r['calls']} | {r['us']:.0f} |" for r in rows]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="compile_e2e")
    ap.add_argument("--sets", default="L1,L2", help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=60.0, help="stop a phase's timed rounds past this")
    ap.add_argument("--eager-rounds", type=int, default=3)
    ap.add_argument("--eager-new", type=int, default=32)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="the tiny Llama on a CPU (smoke test)")
    args = ap.parse_args()
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    device = torch.device("cpu" if args.tiny else "cuda")
    import triton
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": "python3 benchmarks/compile_e2e.py " + " ".join(sys.argv[1:]), "model": MODEL + (" (tiny)" if args.tiny else ""),
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "triton": triton.__version__, "transformers": transformers.__version__, "prompt": args.prompt,
              "new": args.new, "eager_new": args.eager_new, "phases": []}
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    torch._logging.set_logs(perf_hints=True)
    logging.getLogger("torch").addHandler(HINTS)
    base = build(args.tiny, device)
    vocab = base.config.vocab_size
    prompt = torch.randint(3, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1)).to(device)
    log("baseline built")
    with torch.no_grad():
        for name in args.sets.split(","):
            result["phases"].append(run_phase(name, base, prompt, args, device, log))
            log(f"{name}: {json.dumps({k: v for k, v in result['phases'][-1].items() if k in ('compiled', 'error', 'tokens_match')})}")
            (out / "results.json").write_text(json.dumps(result, indent=1))
            write_summary(result, out / "summary.md")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
