"""End-to-end benchmark of Llama-3.1-8B at level 1 with three candidate sets, one model load:

  (a) baseline   the task files themselves as candidates: must pass, token match 100%;
  (b) liger      Liger-Kernel's RMSNorm, rope and SwiGLU activation, bound per model instance
                 through thin candidate files that import liger_kernel (never copied): must pass
                 and shows its measured speedup;
  (c) planted    the baseline with one output column of every RMSNorm scaled by 1.05: must fail
                 the shadow check, naming rms_norm and its layer.

Run on the GPU machine from the repository root (needs torch, triton, transformers, liger_kernel):

    PYTHONPATH=. python benchmarks/e2e_llama8b.py --out benchmarks/results/e2e_llama8b

It writes <out>/<set>.json (the E2EReport of each set) and <out>/summary.md, prints the verdicts,
and exits 0 when (a) and (b) pass and (c) fails with rms_norm blamed. Each set's result also lands in
<out>/partial.jsonl the moment it is measured, so a run killed by a timeout leaves what it had.
Bounded: the timing rounds stop early past --timing-budget-s, the job is killed at --timeout-s, and
nothing is re-run (about 2 minutes on an H100; see the timing note in summary.md). `--tiny` runs the same on the
tiny Llama (CPU-friendly; the liger set needs a GPU, pass --skip-liger there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastkernels.events import E2EProgress, KernelBlamed  # noqa: E402
from fastkernels.measure.e2e import run_benchmarks  # noqa: E402

OPS = ("rms_norm", "rotary_embedding", "silu_and_mul")

LIGER = {
    "rms_norm": '''"""Liger-Kernel's RMSNorm under the task's class name (imported from liger_kernel)."""
from liger_kernel.transformers.rms_norm import LigerRMSNorm


class RMSNorm(LigerRMSNorm):
    def __init__(self, hidden_size, eps=1e-6):
        # casting_mode "llama": reduce in fp32, cast back before the weight multiply, as HF does.
        super().__init__(hidden_size, eps=eps, casting_mode="llama", in_place=False)
''',
    "rotary_embedding": '''"""Liger-Kernel's rope under the task's class name (imported from liger_kernel)."""
from torch import nn
from liger_kernel.transformers.rope import liger_rotary_pos_emb


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.head_dim = head_dim

    def forward(self, q, k, cos, sin):
        return liger_rotary_pos_emb(q, k, cos, sin)
''',
    "silu_and_mul": '''"""Liger-Kernel's SwiGLU activation under the task's class name (imported from liger_kernel)."""
from torch import nn
from liger_kernel.ops.swiglu import LigerSiLUMulFunction


class SiluAndMul(nn.Module):
    def forward(self, gate, up):
        return LigerSiLUMulFunction.apply(gate, up)
''',
}

PLANTED_RMS_NORM = '''"""The baseline RMSNorm with one output column scaled by 1.05 (a planted bug)."""
import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x):
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        out = (self.weight * h.to(x.dtype)).float()
        out[..., 7] *= 1.05
        return out.to(x.dtype)
'''


def write_sets(tmp: Path, skip_liger: bool) -> dict[str, Path]:
    base = ROOT / "tasks" / "baseline" / "L1"
    sets = {"baseline": tmp / "baseline", "liger": tmp / "liger", "planted": tmp / "planted"}
    if skip_liger:
        del sets["liger"]
    for name, folder in sets.items():
        (folder / "L1").mkdir(parents=True)
        for op in OPS:
            if name == "liger":
                text = LIGER[op]
            elif name == "planted" and op == "rms_norm":
                text = PLANTED_RMS_NORM
            else:
                text = (base / f"{op}.py").read_text()
            (folder / "L1" / f"{op}.py").write_text(text)
    return sets


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def spread(t: dict, key: str, spec=".1f") -> str:
    """median [min-max] of one timing figure."""
    mid, lo, hi = t.get(key), t.get(f"{key}_min"), t.get(f"{key}_max")
    if mid is None:
        return "-"
    return f"{mid:{spec}} [{lo:{spec}}-{hi:{spec}}]" if lo is not None and hi is not None else f"{mid:{spec}}"


def ratio(r, key: str) -> str:
    mid, lo, hi = getattr(r, key), getattr(r, f"{key}_min"), getattr(r, f"{key}_max")
    if mid is None:
        return "-"
    return f"{mid:.2f} [{lo:.2f}-{hi:.2f}]" if lo is not None and hi is not None else f"{mid:.2f}"


def summary(reports, command: str, seconds: float) -> str:
    first = next(iter(reports.values()))
    lines = [f"# End-to-end, level 1: {first.model_id}{' (tiny)' if first.tiny else ''}", "",
             f"Command: `{command}` ({seconds:.0f} s)", ""]
    r0 = first
    lines += [f"Device {r0.device}, {r0.dtype}, {r0.weights}; batch {r0.batch}, prompt {r0.prompt_len}, "
              f"{r0.new_tokens} new tokens. Noise floor (baseline bf16 vs fp32): token match "
              f"{fmt(r0.token_match_noise, '.1%')}, top-1 {fmt(r0.top1_agreement_noise, '.1%')}, "
              f"logit error {fmt(r0.logit_rel_error_noise)}.", "",
              "Timing: every figure is the median of timed greedy generations, each after the same generation "
              "run untimed (warm-up), [min-max] beside it. Each set was timed in rounds with the unpatched baseline, "
              "alternating who goes first (AB, BA, ...); its speedup is the median of the per-round ratios "
              "[min-max over the rounds]. Timed runs use the model's default attention (SDPA) for baseline and "
              "patched model alike; the correctness figures use eager attention. A speedup whose range "
              "includes 1.00 is noise. Set `baseline` binds the baseline files themselves: its ratio is what "
              "binding through fastkernels' forwards costs or saves, with no kernel changed.", ""]
    lines += ["| model | attention | runs | prefill ms | decode tok/s | note |", "|---|---|---|---|---|---|"]
    for key in ("baseline_eager", "baseline_eager_attention", "baseline_compiled"):
        t = r0.timings.get(key)
        if t:
            lines.append(f"| {key.replace('_', ' ')} | {t.get('attention', '')} | {t.get('reps', '')} "
                         f"| {spread(t, 'prefill_ms')} | {spread(t, 'decode_tok_s')} | {t.get('note', '')} |")
    lines += ["", "| set | result | shadow | token match | top-1 | logit error | prefill ms | decode tok/s "
              "| baseline tok/s (same rounds) | decode speedup | prefill speedup | blamed |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        p = r.timings.get("patched", {})
        b = r.timings.get("baseline_this_set", {})
        lines.append(f"| {name} | {'pass' if r.passed else 'FAIL'} | {'pass' if r.shadow and r.shadow['passed'] else 'FAIL'} "
                     f"| {fmt(r.token_match, '.1%')} | {fmt(r.top1_agreement, '.1%')} | {fmt(r.logit_rel_error)} "
                     f"| {spread(p, 'prefill_ms')} | {spread(p, 'decode_tok_s')} | {spread(b, 'decode_tok_s')} "
                     f"| {ratio(r, 'speedup_decode')} | {ratio(r, 'speedup_prefill')} | {', '.join(r.blamed) or '-'} |")
    lines.append("")
    for name, r in reports.items():
        lines.append(f"- {name}: {r.verdict}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", required=True, help="folder for the reports")
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled baseline")
    ap.add_argument("--skip-liger", action="store_true", help="no liger set (e.g. on a CPU)")
    ap.add_argument("--reps", type=int, default=4, help="timed rounds per comparison (baseline and patched each)")
    ap.add_argument("--timing-budget-s", type=float, default=80.0,
                    help="the timing rounds stop early (in pairs, at least 2) past this many seconds in all")
    ap.add_argument("--timeout-s", type=float, default=300.0, help="the whole measurement job is killed after this")
    args = ap.parse_args()

    t_start = time.monotonic()

    def sink(event):
        if isinstance(event, E2EProgress):
            print(f"[{time.monotonic() - t_start:5.0f} s] [{event.stage} {event.done}/{event.total}] {event.detail}",
                  flush=True)
        elif isinstance(event, KernelBlamed):
            print(f"blamed {event.op}: {event.reason}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fk-e2e-sets-"))
    start = time.monotonic()
    try:
        sets = write_sets(tmp, args.skip_liger)
        # One model load, no reruns: a job that dies reports the sets it finished (partial.jsonl).
        partial = out / "partial.jsonl"
        partial.unlink(missing_ok=True)
        reports = run_benchmarks(args.model, 1, sets, tiny=args.tiny, prompt_len=args.prompt_len,
                                 new_tokens=args.new_tokens, sink=sink,
                                 compile_baseline=False if args.no_compile else None, timing_reps=args.reps,
                                 timing_budget_s=args.timing_budget_s, timeout=args.timeout_s,
                                 partial_file=partial, retry_sets_alone=False, blame=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.monotonic() - start
    for name, r in reports.items():
        (out / f"{name}.json").write_text(json.dumps(r.to_dict(), indent=2))
    command = "PYTHONPATH=. python benchmarks/e2e_llama8b.py " + " ".join(sys.argv[1:])
    text = summary(reports, command, seconds)
    (out / "summary.md").write_text(text)
    print(text)
    expected = (reports["baseline"].passed and reports["baseline"].token_match == 1.0
                and ("liger" not in reports or reports["liger"].passed)
                and not reports["planted"].passed and "L1/rms_norm" in reports["planted"].blamed)
    print("as expected" if expected else "NOT as expected: see the verdicts above")
    return 0 if expected else 1


if __name__ == "__main__":
    sys.exit(main())
