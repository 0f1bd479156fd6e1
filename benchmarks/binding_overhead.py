"""What binding costs: greedy decode of a model patched with the baseline task files themselves
(numerically the same as HF's modules) against the same model unpatched, per L1 operator alone and
all of them together. At batch 1 decode every operator is launch-bound, so any Python the binding
adds per call (frames, dict lookups, reshapes, argument shuffling) shows up directly as lost speed.

Run from the repository root (CPU proxy: tiny Llama, fp32, one thread; about 45 s;
benchmarks/results/binding_overhead_cpu.md holds its output):

    PYTHONPATH=. python benchmarks/binding_overhead.py --device cpu --steps 300 --rounds 25

or on a GPU (bf16, the full-size model's tiny variant unless --full):

    PYTHONPATH=. python benchmarks/binding_overhead.py --device cuda --steps 300 --rounds 25

Each round times, for every set, the unpatched model and the patched model next to each other,
alternating which goes first (AB, BA, ...); a run is a prefill of --prompt tokens, 3 untimed decode
steps, then --steps timed decode steps through HF's DynamicCache with the garbage collector held
off. The ratio of a round is unpatched time / patched time (1.00 = binding costs nothing, < 1 =
the patched model is slower); the table gives the median over the rounds and its range. Every
patched run's tokens must equal the unpatched model's (the baseline files are exact), else the
script exits 1. The patch is made without the shadow check, as a user binds kernels to run them.
The attention op is left out by default: its baseline file is eager attention, so against HF's
SDPA it measures two different attentions, not the binding (add it with --ops).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fastkernels.measure.e2e_child import attention_implementation  # noqa: E402
from fastkernels.models.catalog import resolve  # noqa: E402
from fastkernels.models.loading import load_model  # noqa: E402
from fastkernels.registry.forwards import cache_kwarg  # noqa: E402
from fastkernels.registry.patching import patch  # noqa: E402
from fastkernels.registry.tasks import baseline_dir, load_task  # noqa: E402

DEFAULT_OPS = ("rms_norm", "add_rms_norm", "rotary_embedding", "silu_and_mul", "embedding")
WARMUP_STEPS = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode(model, prompt: torch.Tensor, steps: int) -> tuple[float, torch.Tensor]:
    """(seconds per timed decode step, the greedy tokens of those steps)."""
    from transformers.cache_utils import DynamicCache

    device = prompt.device
    kw = cache_kwarg(type(model))
    cache = DynamicCache(config=model.config)
    out = model(prompt, use_cache=True, logits_to_keep=1, **{kw: cache})
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(WARMUP_STEPS):
        nxt = model(nxt, use_cache=True, **{kw: cache}).logits[:, -1].argmax(-1, keepdim=True)
    tokens = []
    was = gc.isenabled()
    gc.disable()
    try:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = model(nxt, use_cache=True, **{kw: cache}).logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
        sync(device)
        t1 = time.perf_counter()
    finally:
        if was:
            gc.enable()
    return (t1 - t0) / steps, torch.cat(tokens, dim=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: float32 on cpu, bfloat16 on cuda")
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    ap.add_argument("--full", action="store_true", help="the full-size model, not its tiny variant")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--attention", default="sdpa", help="attention implementation of both models")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu only)")
    ap.add_argument("--ops", default=",".join(DEFAULT_OPS), help="comma-separated L1 ops, each timed alone")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    entry = resolve(args.model, tiny=not args.full)
    model = load_model(entry, dtype=dtype, device=device, seed=0).model
    limit = model.config.max_position_embeddings
    if args.prompt + WARMUP_STEPS + args.steps > limit:
        raise SystemExit(f"--prompt + --steps must stay under the model's {limit} positions")
    family = model.config.model_type
    ops = [op for op in args.ops.split(",") if op]
    unused = [op for op in ops if family not in load_task(1, op).FAMILIES]
    if unused:
        raise SystemExit(f"{', '.join(unused)}: not used by {family} models")
    sets = {op: {op: str(baseline_dir(1) / f"{op}.py")} for op in ops}
    if len(ops) > 1:
        sets["all"] = {op: str(baseline_dir(1) / f"{op}.py") for op in ops}
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt),
                           generator=torch.Generator().manual_seed(1)).to(device)

    def unpatched():
        return decode(model, prompt, args.steps)

    def patched(codes):
        handle = patch(model, codes, level=1)
        try:
            return decode(model, prompt, args.steps)
        finally:
            handle.unpatch()

    times: dict[str, dict[str, list[float]]] = {name: {"hf": [], "patched": []} for name in sets}
    exact = {name: True for name in sets}
    t_start = time.perf_counter()
    with attention_implementation(model, args.attention) as used:
        _, reference = unpatched()  # also warms up the allocator and the attention path
        for r in range(args.rounds):
            for i, (name, codes) in enumerate(sets.items()):
                runs = {"hf": unpatched, "patched": lambda codes=codes: patched(codes)}
                for who in (("hf", "patched") if (r + i) % 2 == 0 else ("patched", "hf")):
                    seconds, tokens = runs[who]()
                    times[name][who].append(seconds)
                    if who == "patched" and not torch.equal(tokens, reference):
                        exact[name] = False
    wall = time.perf_counter() - t_start

    print(f"device {device.type} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"{str(dtype).replace('torch.', '')}, {entry.display_name}, attention {used}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads() if device.type == 'cpu' else '-'}; "
          f"batch 1, prompt {args.prompt}, {args.steps} decode steps per run, {args.rounds} rounds ({wall:.0f} s)")
    print()
    print("| set | HF us/step | patched us/step | speed ratio (HF time / patched time) | tokens equal |")
    print("|---|---|---|---|---|")
    for name in sets:
        hf, pt = times[name]["hf"], times[name]["patched"]
        ratios = [h / p for h, p in zip(hf, pt)]
        label = name if name != "all" else f"all ({', '.join(ops)})"
        print(f"| {label} | {statistics.median(hf) * 1e6:.0f} | {statistics.median(pt) * 1e6:.0f} | "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] | "
              f"{'yes' if exact[name] else 'NO'} |")
    return 0 if all(exact.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
