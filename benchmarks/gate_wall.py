"""Wall time of the agent's gate (validate + unit benchmark of one candidate, `run_gate`), one gate
after another as the agent runs them on one GPU: children started per job ("cold start") against
children started ahead with their imports done ("warm start", fastkernels.sandbox `warm`).

    PYTHONPATH=. python benchmarks/gate_wall.py --out benchmarks/results/gate_wall_h100.md   # on the GPU
    PYTHONPATH=. python benchmarks/gate_wall.py --tiny --out /tmp/gate_wall_cpu.md           # on a CPU

The candidates are the library's L1 kernels of the model (their own code, as the agent's library
backend hands them over). The first gate of each mode also pays what nothing can hide: Triton's
compile of the kernel and, on a fresh machine, torch.compile of the baseline (its time is cached per
GPU after that). Gates after the first are what an agent run sees for every further operator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastkernels import sandbox  # noqa: E402
from fastkernels.judge import gate  # noqa: E402
from fastkernels.registry.tasks import discover, kernel_source, library_dir  # noqa: E402


def gates(specs, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for spec in specs:
            code = kernel_source(library_dir(spec.level) / f"{spec.name}.py")
            t0 = time.perf_counter()
            v, rep = gate.run_gate(spec, code)
            rows.append({"round": r, "op": spec.name, "wall_s": time.perf_counter() - t0, "passed": v.ok and rep.passed,
                         "phases": rep.phase_seconds, "error": v.error or rep.failure_message()})
            print(f"  round {r} {spec.name:18s} {rows[-1]['wall_s']:6.1f} s passed={rows[-1]['passed']} "
                  + " ".join(f"{k}={x:.1f}" for k, x in rep.phase_seconds.items()), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--ops", default="rms_norm,silu_and_mul,add_rms_norm", help="comma-separated L1 operators")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    names = [o.strip() for o in args.ops.split(",") if o.strip()]
    specs = [s for s in discover(args.model, 1, tiny=args.tiny) if s.name in names]
    device = "cuda" if sandbox.cuda_present() else "cpu (Triton interpreter, tiny shapes)"
    results = {}
    for mode, warm in (("cold start", False), ("warm start", True)):
        print(f"{mode}:", flush=True)
        sandbox.shutdown_warm()  # warm starts only where prewarm turns them on
        if warm:  # as the agent does before its first gate
            sandbox.prewarm(gate.GATE_PRELOAD)
        results[mode] = gates(specs, args.rounds)
    sandbox.shutdown_warm()
    lines = [f"# Gate wall time: validate + unit benchmark of one L1 candidate ({device})", "",
             f"Command: `PYTHONPATH=. python benchmarks/gate_wall.py {' '.join(sys.argv[1:])}`  ",
             f"Model: {args.model}{' (tiny)' if args.tiny else ''}; operators {', '.join(names)}; {args.rounds} rounds "
             "each, one gate after another (as the agent runs them on one GPU).", "",
             "| mode | round | op | wall s | passed | setup s | checks s | timing s |", "|---|---|---|---:|---|---:|---:|---:|"]
    for mode, rows in results.items():
        for r in rows:
            ph = r["phases"]
            lines.append(f"| {mode} | {r['round']} | {r['op']} | {r['wall_s']:.1f} | {r['passed']} | "
                         f"{ph.get('setup', 0):.1f} | {ph.get('checks', 0):.1f} | {ph.get('timing', 0):.1f} |")
    lines.append("")
    for mode, rows in results.items():
        later = [r["wall_s"] for r in rows if r["round"] > 0] or [r["wall_s"] for r in rows]
        lines.append(f"- {mode}: median {statistics.median(later):.1f} s per gate after the first round "
                     f"(min {min(later):.1f}, max {max(later):.1f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["passed"] for rows in results.values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
