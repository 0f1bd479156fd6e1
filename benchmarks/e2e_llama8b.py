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
and exits 0 when (a) and (b) pass and (c) fails with rms_norm blamed. `--tiny` runs the same on the
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

from fastkernels.bench.e2e import run_benchmarks  # noqa: E402
from fastkernels.events import E2EProgress, KernelBlamed  # noqa: E402

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


def summary(reports, command: str, seconds: float) -> str:
    first = next(iter(reports.values()))
    lines = [f"# End-to-end, level 1: {first.model_id}{' (tiny)' if first.tiny else ''}", "",
             f"Command: `{command}` ({seconds:.0f} s)", ""]
    r0 = next(iter(reports.values()))
    lines += [f"Device {r0.device}, {r0.dtype}, {r0.weights}; batch {r0.batch}, prompt {r0.prompt_len}, "
              f"{r0.new_tokens} new tokens. Noise floor (baseline bf16 vs fp32): token match "
              f"{fmt(r0.token_match_noise, '.1%')}, top-1 {fmt(r0.top1_agreement_noise, '.1%')}, "
              f"logit error {fmt(r0.logit_rel_error_noise)}.", ""]
    eager = r0.timings.get("baseline_eager", {})
    compiled = r0.timings.get("baseline_compiled", {})
    lines += [f"Baselines: eager prefill {fmt(eager.get('prefill_ms'), '.1f')} ms, decode "
              f"{fmt(eager.get('decode_tok_s'), '.1f')} tok/s; compiled (HF static cache) decode "
              f"{fmt(compiled.get('decode_tok_s'), '.1f')} tok/s {compiled.get('note', '')}", ""]
    lines += ["| set | result | shadow | token match | top-1 | logit error | prefill ms | decode tok/s | decode speedup | blamed |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        p = r.timings.get("patched", {})
        lines.append(f"| {name} | {'pass' if r.passed else 'FAIL'} | {'pass' if r.shadow and r.shadow['passed'] else 'FAIL'} "
                     f"| {fmt(r.token_match, '.1%')} | {fmt(r.top1_agreement, '.1%')} | {fmt(r.logit_rel_error)} "
                     f"| {fmt(p.get('prefill_ms'), '.1f')} | {fmt(p.get('decode_tok_s'), '.1f')} "
                     f"| {fmt(r.speedup_decode, '.2f')} | {', '.join(r.blamed) or '-'} |")
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
    args = ap.parse_args()

    def sink(event):
        if isinstance(event, E2EProgress):
            print(f"[{event.stage} {event.done}/{event.total}] {event.detail}", flush=True)
        elif isinstance(event, KernelBlamed):
            print(f"blamed {event.op}: {event.reason}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fk-e2e-sets-"))
    start = time.monotonic()
    try:
        sets = write_sets(tmp, args.skip_liger)
        reports = run_benchmarks(args.model, 1, sets, tiny=args.tiny, prompt_len=args.prompt_len,
                                 new_tokens=args.new_tokens, sink=sink,
                                 compile_baseline=False if args.no_compile else None)
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
