"""Is the unit-benchmark stopwatch fair, and does the gate catch cheats, on a real GPU?

For every L1 operator of a model (full size; default Llama-3.1-8B-Instruct):
  (a) the baseline file itself as the candidate: every shape must pass, speedup ~1.0 vs eager;
  (b) a cheating candidate (the baseline that caches its first output and returns it for every new
      input): must be caught;
and for rms_norm the whole cheat corpus of tests/engine/cheats (side streams included, which only a
GPU can show). Then the wall time of validate + unit test for one L1 candidate on a warm GPU, and
the sandbox's child start cost.

Needs only torch, triton and transformers (no mlflow, textual or anthropic).

    python benchmarks/unit_fairness.py --out benchmarks/unit_fairness_h100
writes benchmarks/unit_fairness_h100.json and .md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastkernels.agent.validate import validate_kernel  # noqa: E402
from fastkernels.bench.sandbox import run_job  # noqa: E402
from fastkernels.bench.unit import run_unit  # noqa: E402
from fastkernels.registry.tasks import discover  # noqa: E402

CHEATS = ROOT / "tests" / "engine" / "cheats"


def caching_cheat(spec) -> str:
    """The baseline, renamed, under a subclass that returns its first output for every input."""
    src = re.sub(rf"\bclass {spec.class_name}\b", f"class _Honest{spec.class_name}", spec.source_code, count=1)
    return src + f'''

class {spec.class_name}(_Honest{spec.class_name}):
    def forward(self, *args, **kwargs):
        if getattr(self, "_memo", None) is None:
            self._memo = super().forward(*args, **kwargs)
        return self._memo
'''


def shape_rows(report, what):
    rows = []
    for s in report.shapes:
        rows.append({"op": report.op, "what": what, "shape": s.shape, "dims": s.dims, "dtype": s.dtype,
                     "passed": s.passed, "eager_ms": s.baseline_eager_ms, "compile_ms": s.baseline_compile_ms,
                     "candidate_ms": s.candidate_ms, "speedup_vs_eager": s.speedup_vs_eager,
                     "speedup_vs_compile": s.speedup_vs_compile, "roofline_fraction": s.roofline_fraction,
                     "reason": s.reason})
    return rows


def fmt(x, spec=".4f"):
    return format(x, spec) if isinstance(x, (int, float)) else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    ap.add_argument("--ops", default=None, help="comma-separated subset of the L1 operators")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline (saves minutes)")
    ap.add_argument("--out", required=True, help="path prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (timings on a CPU mean nothing)", file=sys.stderr)
        return 2
    started = time.time()
    specs = discover(args.model, 1, tiny=False)
    if args.ops:
        wanted = set(args.ops.split(","))
        specs = [s for s in specs if s.name in wanted]
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": platform.python_version(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "fair": [], "cheats": [], "rows": []}

    for spec in specs:
        t0 = time.time()
        fair = run_unit(spec, spec.source_code, seeds=args.seeds, require_kernel=False,
                        compile_baseline=not args.no_compile)
        speedups = [s.speedup_vs_eager for s in fair.shapes if s.speedup_vs_eager is not None]
        result["fair"].append({"op": spec.key, "passed": fair.passed, "error": fair.error,
                               "speedups_vs_eager": speedups, "seconds": time.time() - t0,
                               "ceilings": fair.ceilings})
        result["rows"] += shape_rows(fair, "baseline as candidate")
        print(f"{spec.key:22s} baseline-as-candidate passed={fair.passed} speedups={[round(x, 3) for x in speedups]}"
              + (f" error={fair.failure_message()}" if not fair.passed else ""), flush=True)
        cheat = run_unit(spec, caching_cheat(spec), seeds=args.seeds, require_kernel=False, compile_baseline=False)
        result["cheats"].append({"op": spec.key, "cheat": "caches its first output", "caught": not cheat.passed,
                                 "message": cheat.failure_message()})
        print(f"{spec.key:22s} caching cheat caught={not cheat.passed}: {cheat.failure_message().splitlines()[-1][:150]}",
              flush=True)

    rms = next((s for s in specs if s.name == "rms_norm"), None)
    if rms is not None:
        for path in sorted(CHEATS.glob("*.py")):
            if path.stem in ("faults", "correct_rms_norm"):
                continue
            rep = run_unit(rms, path.read_text(), seeds=1, compile_baseline=False)
            result["cheats"].append({"op": rms.key, "cheat": path.stem, "caught": not rep.passed,
                                     "message": rep.failure_message()})
            print(f"{rms.key:22s} cheat {path.stem:20s} caught={not rep.passed}: "
                  f"{(rep.failure_message().splitlines() or [''])[-1][:150]}", flush=True)

        # Wall time of the agent's gate for one candidate, warm (second of two runs: Triton's and
        # Inductor's caches and the device ceilings are in place after the first).
        code = (CHEATS / "correct_rms_norm.py").read_text()
        walls = []
        for _ in range(2):
            t0 = time.time()
            v = validate_kernel(code, rms.class_name, spec=rms)
            rep = run_unit(rms, code, seeds=args.seeds, compile_baseline=not args.no_compile)
            walls.append({"validate_s": v.seconds, "unit_s": rep.seconds, "total_s": time.time() - t0,
                          "passed": v.ok and rep.passed, "error": v.error or rep.failure_message()})
        result["gate_wall_time"] = {"candidate": "tests/engine/cheats/correct_rms_norm.py", "cold": walls[0],
                                    "warm": walls[1]}
        result["rows"] += shape_rows(rep, "honest Triton RMSNorm")
        print(f"gate wall time (validate + unit, {rms.key}): cold {walls[0]['total_s']:.1f} s, "
              f"warm {walls[1]['total_s']:.1f} s, passed={walls[1]['passed']}", flush=True)

    probe = "fastkernels.bench.sandbox:probe"
    starts = [run_job(probe, {}, timeout=60, label="start").seconds for _ in range(3)]
    torch_starts = [run_job(probe, {"torch": True}, timeout=120, label="start").seconds for _ in range(3)]
    oob = run_job("tests.engine.cheats.faults:illegal_memory_access", {}, timeout=120, label="out-of-bounds kernel")
    result["fault_illegal_memory_access"] = {"kind": oob.kind, "error": oob.error}
    print(f"illegal memory access job: kind={oob.kind}: {oob.error}", flush=True)
    result["child_start_s"] = {"bare": min(starts), "importing_torch": min(torch_starts)}
    result["total_seconds"] = time.time() - started

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    md = [f"# Unit-benchmark fairness and anti-cheat on {result['gpu']}", "",
          f"Command: `{result['command']}`  ", f"Model: {args.model} (full size), torch {result['torch']}", "",
          "| op | candidate | shape | dtype | pass | eager ms | compile ms | candidate ms | speedup | vs compile | roofline |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["candidate_ms"] is None:
            continue
        roof = f"{100 * r['roofline_fraction']:.0f}%" if r["roofline_fraction"] is not None else "-"
        md.append(f"| {r['op']} | {r['what']} | {r['shape']} | {r['dtype']} | {r['passed']} | {fmt(r['eager_ms'])} | "
                  f"{fmt(r['compile_ms'])} | {fmt(r['candidate_ms'])} | {fmt(r['speedup_vs_eager'], '.3f')} | "
                  f"{fmt(r['speedup_vs_compile'], '.3f')} | {roof} |")
    md += ["", "| op | cheat | caught | message (last line) |", "|---|---|---|---|"]
    for c in result["cheats"]:
        last = (c["message"].splitlines() or [""])[-1].replace("|", "/")[:160]
        md.append(f"| {c['op']} | {c['cheat']} | {c['caught']} | {last} |")
    if "gate_wall_time" in result:
        g = result["gate_wall_time"]
        md += ["", f"Gate wall time (validate + unit test, one L1 candidate): cold {g['cold']['total_s']:.1f} s, "
               f"warm {g['warm']['total_s']:.1f} s."]
    cs = result["child_start_s"]
    md += [f"Sandbox child start: {cs['bare']:.2f} s bare, {cs['importing_torch']:.2f} s including `import torch`.",
           f"Out-of-bounds Triton store in a job: kind `{oob.kind}`: {oob.error}",
           f"Total: {result['total_seconds']:.0f} s."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    fair_ok = (all(f["passed"] for f in result["fair"]) and all(c["caught"] for c in result["cheats"])
               and oob.kind == "cuda_error")
    return 0 if fair_ok else 1


if __name__ == "__main__":
    sys.exit(main())
