"""Is the unit-benchmark stopwatch fair, and does the gate catch cheats, on a real GPU?

For every L1 operator of a model (full size; default Llama-3.1-8B-Instruct), in ONE sandboxed child
per operator (fastkernels.judge.gate.run_unit_many):
  (a) the baseline file itself as the candidate: every shape must pass, and its speedup against
      the eager baseline must read 1.00 within FAIR_WITHIN (device time; the wall-time ratio beside
      it, and whether the shape is launch-bound); the torch.compile baseline is compiled and timed
      now, interleaved with the others (Inductor's on-disk caches shared by every child);
  (b) a cheating candidate (the baseline that caches its first output and returns it for every new
      input): must be caught;
and for rms_norm the whole cheat corpus of tests/engine/cheats in one more child (side streams
included, which only a GPU can show). Before (a) and (b), which take most of the time: the wall time
of the agent's gate (validate + unit test) for one L1 candidate, cold and warm (the second round
finds its child started ahead: fastkernels.sandbox `warm`), the sandbox's child start cost and
an out-of-bounds kernel. `--ops` restricts (a) and (b) to a subset, e.g. to finish a run that a
budget cut short.

Results are written after every step (PREFIX.json and PREFIX.md), so a run stopped by a timeout
still leaves what it measured; --budget-s skips what would start after the budget is spent.

    python benchmarks/unit_fairness.py --out benchmarks/results/unit_fairness_h100

Needs only torch, triton and transformers (no mlflow, textual or anthropic).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastkernels.judge.gate import run_gate, run_unit, run_unit_many
from fastkernels.judge.validate import validate_kernel  # noqa: E402
from fastkernels.measure.unit import precompile_baselines  # noqa: E402
from fastkernels.registry.tasks import discover  # noqa: E402
from fastkernels.sandbox import run_job  # noqa: E402

CHEATS = ROOT / "tests" / "engine" / "cheats"
# A baseline timed against itself must read 1.00 within this (device-time interquartile means of
# interleaved calls; what is left is the GPU's own jitter on few-microsecond ops).
FAIR_WITHIN = 0.05


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
        t = s.timing or {}  # the candidate's own stopwatch and the referee's for the baselines
        dev = {**((t.get("baselines") or {}).get("device") or {}), **((t.get("candidate") or {}).get("device") or {})}
        rows.append({"op": report.op, "what": what, "shape": s.shape, "dims": s.dims, "dtype": s.dtype,
                     "passed": s.passed, "eager_ms": s.baseline_eager_ms, "compile_ms": s.baseline_compile_ms,
                     "candidate_ms": s.candidate_ms, "speedup_vs_eager": s.speedup_vs_eager,
                     "speedup_vs_compile": s.speedup_vs_compile, "roofline_fraction": s.roofline_fraction,
                     "eager_wall_ms": s.baseline_eager_wall_ms, "candidate_wall_ms": s.candidate_wall_ms,
                     "speedup_wall_vs_eager": s.speedup_wall_vs_eager, "launch_bound": s.launch_bound,
                     "method": s.timing_method, "compile_cached": s.compile_cached,
                     "eager_iqr_ms": [dev.get("eager", {}).get("p25"), dev.get("eager", {}).get("p75")],
                     "candidate_iqr_ms": [dev.get("candidate", {}).get("p25"), dev.get("candidate", {}).get("p75")],
                     "reason": s.reason})
    return rows


def fmt(x, spec=".4f"):
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def us(x):
    return fmt(1e3 * x, ".1f") if isinstance(x, (int, float)) else "-"


def last_line(text: str) -> str:
    return (text.splitlines() or [""])[-1]


def markdown(result: dict) -> str:
    md = [f"# Unit-benchmark fairness and anti-cheat on {result['gpu']}", "",
          f"Command: `{result['command']}`  ", f"Model: {result['model']} (full size), torch {result['torch']}  ",
          f"Status: {result['status']} after {result.get('elapsed_s', 0):.0f} s", "",
          "Device time: interquartile mean of 200 calls each, the host's launch cost hidden (GPU held while calls are enqueued), "
          "baseline, candidate and torch.compile interleaved call by call, L2 flushed, inputs rotated; IQR in "
          "brackets. Wall: per call issued back to back from Python. Launch-bound: wall > 1.5 x device time "
          "(an eager caller sees the wall ratio).", "",
          "| op | candidate | shape | pass | eager us [IQR] | compile us | candidate us [IQR] | speedup (device) "
          "| eager wall us | cand wall us | speedup (wall) | launch-bound | fair |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["candidate_ms"] is None:
            continue
        fair = "-"
        if r["what"] == "baseline as candidate" and r["speedup_vs_eager"] is not None:
            fair = "yes" if abs(r["speedup_vs_eager"] - 1) <= FAIR_WITHIN else "NO"
        e_iqr, c_iqr = r["eager_iqr_ms"], r["candidate_iqr_ms"]
        md.append(f"| {r['op']} | {r['what']} | {r['shape']} {r['dtype']} | {r['passed']} "
                  f"| {us(r['eager_ms'])} [{us(e_iqr[0])}-{us(e_iqr[1])}] "
                  f"| {us(r['compile_ms'])}{' (cached)' if r['compile_cached'] else ''} "
                  f"| {us(r['candidate_ms'])} [{us(c_iqr[0])}-{us(c_iqr[1])}] | {fmt(r['speedup_vs_eager'], '.3f')} "
                  f"| {us(r['eager_wall_ms'])} | {us(r['candidate_wall_ms'])} | {fmt(r['speedup_wall_vs_eager'], '.3f')} "
                  f"| {'yes' if r['launch_bound'] else 'no'} | {fair} |")
    md += ["", "| op | cheat | caught | message (last line) |", "|---|---|---|---|"]
    for c in result["cheats"]:
        md.append(f"| {c['op']} | {c['cheat']} | {c['caught']} | {last_line(c['message']).replace('|', '/')[:160]} |")
    md.append("")
    for f in result["fair"]:
        md.append(f"- {f['op']}: one child, {f['seconds']:.1f} s (baseline as candidate + caching cheat, compile included)")
    g = result.get("gate_wall_time")
    if g:
        for k in ("cold", "cold_one_child", "warm", "warm_one_child"):
            if k in g:
                w = g[k]
                phases = ", ".join(f"{p} {x:.1f} s" for p, x in (w.get("unit_phases_s") or {}).items())
                if k.endswith("one_child"):
                    how = f"run_gate: one child of {w['unit_s']:.1f} s, its validation stage {w['validate_s']:.1f} s"
                else:
                    how = f"validate_kernel {w['validate_s']:.1f} s + run_unit {w['unit_s']:.1f} s"
                md.append(f"- Gate wall time, {k.replace('_', ' ')} ({how}; unit phases: {phases}; "
                          f"{g['candidate']}): {w['total_s']:.1f} s, passed={w['passed']}")
    if result.get("precompile"):
        pc = result["precompile"]
        md.append(f"- Baselines compiled beforehand, one child per op in parallel: the longest {max(p['seconds'] for p in pc.values()):.0f} s"
                  + "".join(f"; {op} {p['kind']}" for op, p in pc.items() if p["kind"] != "ok"))
    if "child_start_s" in result:
        cs = result["child_start_s"]
        md.append(f"- Sandbox child start: {cs['bare']:.2f} s bare, {cs['importing_torch']:.2f} s including `import torch`.")
    if "fault_illegal_memory_access" in result:
        f = result["fault_illegal_memory_access"]
        md.append(f"- Out-of-bounds Triton store in a job: kind `{f['kind']}`: {f['error']}")
    for s in result["skipped"]:
        md.append(f"- skipped (budget): {s}")
    return "\n".join(md) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    ap.add_argument("--ops", default=None, help="comma-separated subset of the L1 operators")
    ap.add_argument("--seeds", type=int, default=2, help="fresh-input samples per shape for the fairness checks")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--budget-s", type=float, default=170.0, help="start no new step after this many seconds")
    ap.add_argument("--out", required=True, help="path prefix: writes PREFIX.json and PREFIX.md")
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU (timings on a CPU mean nothing)", file=sys.stderr)
        return 2
    # Every child compiles into (and reads from) the same Inductor and Triton caches.
    cache = Path(tempfile.gettempdir()) / "fastkernels-unit-fairness-cache"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(cache / "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    started = time.time()
    specs = discover(args.model, 1, tiny=False)
    if args.ops:
        wanted = set(args.ops.split(","))
        specs = [s for s in specs if s.name in wanted]
    result = {"model": args.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": platform.python_version(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "status": "running", "fair": [], "cheats": [], "rows": [], "skipped": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(status="running"):
        result["status"] = status
        result["elapsed_s"] = time.time() - started
        out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
        out.with_suffix(".md").write_text(markdown(result))

    def over_budget(what: str) -> bool:
        if time.time() - started > args.budget_s:
            result["skipped"].append(what)
            print(f"skipped (budget of {args.budget_s:.0f} s spent): {what}", flush=True)
            save()
            return True
        return False

    save()
    # Compiling the baselines is most of a cold run (Inductor's caches are empty on a fresh machine):
    # every operator's compiles start at once, in children of their own, while the cheat corpus
    # (which times nothing) runs; each operator's timed child then finds its compiled graphs cached.
    precompiled = {}
    if not args.no_compile:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max(1, len(specs)))
        precompiled = {s.key: pool.submit(precompile_baselines, s, timeout=300) for s in specs}
        pool.shutdown(wait=False)
    rms = next((s for s in specs if s.name == "rms_norm"), None)
    if rms is not None and not over_budget("rms_norm cheat corpus"):
        from tests.engine.cheats.corpus import names, source

        corpus = {name: source(name) for name in names()}
        for name, rep in run_unit_many(rms, corpus, seeds=1, compile_baseline=False).items():
            result["cheats"].append({"op": rms.key, "cheat": name, "caught": not rep.passed,
                                     "message": rep.failure_message()})
            print(f"{rms.key:22s} cheat {name:20s} caught={not rep.passed}: "
                  f"{last_line(rep.failure_message())[:150]}", flush=True)
        save()
    for spec in specs:
        if spec.key in precompiled:
            job = precompiled[spec.key].result()  # timing waits until no compile runs beside it
            result.setdefault("precompile", {})[spec.key] = {"kind": job.kind, "seconds": job.seconds,
                                                             "per_shape_s": job.value, "error": job.error}
    if rms is not None:
        # The agent's gate for one candidate, as the agent runs it (validate_kernel, then run_unit
        # with the compiled baseline's time from this GPU's cache), then as run_gate (both in one
        # child); warm = the second round.
        code = (CHEATS / "correct_rms_norm.py").read_text()
        gate = {"candidate": "tests/engine/cheats/correct_rms_norm.py"}
        for which in ("cold", "warm"):
            if over_budget(f"gate wall time ({which})"):
                break
            t0 = time.time()
            v = validate_kernel(code, rms.class_name, spec=rms)
            rep = run_unit(rms, code, compile_baseline=not args.no_compile)
            gate[which] = {"validate_s": v.seconds, "unit_s": rep.seconds, "total_s": time.time() - t0,
                           "unit_phases_s": rep.phase_seconds, "passed": v.ok and rep.passed,
                           "error": v.error or rep.failure_message()}
            print(f"gate wall time ({which}, validate + unit, {rms.key}): {gate[which]['total_s']:.1f} s "
                  f"(validate {v.seconds:.1f} s, unit {rep.seconds:.1f} s: "
                  f"{', '.join(f'{k} {x:.1f} s' for k, x in rep.phase_seconds.items())}), "
                  f"passed={gate[which]['passed']}", flush=True)
            # The same gate in one child (run_gate): one interpreter start and torch import fewer.
            t0 = time.time()
            v1, rep1 = run_gate(rms, code, compile_baseline=not args.no_compile)
            gate[f"{which}_one_child"] = {"validate_s": v1.seconds, "unit_s": rep1.seconds, "total_s": time.time() - t0,
                                          "unit_phases_s": rep1.phase_seconds, "passed": v1.ok and rep1.passed,
                                          "error": v1.error or rep1.failure_message()}
            print(f"gate wall time ({which}, one child, {rms.key}): {time.time() - t0:.1f} s, "
                  f"passed={v1.ok and rep1.passed}", flush=True)
            result["gate_wall_time"] = gate
            if which == "warm":
                result["rows"] += shape_rows(rep, "honest Triton RMSNorm")
            save()

    if not over_budget("sandbox child start cost"):
        probe = "fastkernels.sandbox:probe"
        starts = [run_job(probe, {}, timeout=60, label="start").seconds for _ in range(2)]
        torch_starts = [run_job(probe, {"torch": True}, timeout=120, label="start").seconds for _ in range(2)]
        result["child_start_s"] = {"bare": min(starts), "importing_torch": min(torch_starts)}
        save()
    if not over_budget("out-of-bounds fault job"):
        oob = run_job("tests.engine.cheats.faults:illegal_memory_access", {}, timeout=120, label="out-of-bounds kernel")
        result["fault_illegal_memory_access"] = {"kind": oob.kind, "error": oob.error}
        print(f"illegal memory access job: kind={oob.kind}: {oob.error}", flush=True)

    for spec in specs:
        if over_budget(f"{spec.key}: baseline as candidate and caching cheat"):
            continue
        t0 = time.time()
        got = run_unit_many(spec, {"baseline": spec.source_code, "caching cheat": caching_cheat(spec)},
                            seeds=args.seeds, require_kernel=False, compile_baseline=not args.no_compile,
                            compile_cache=False)
        fair, cheat = got["baseline"], got["caching cheat"]
        speedups = [s.speedup_vs_eager for s in fair.shapes if s.speedup_vs_eager is not None]
        result["fair"].append({"op": spec.key, "passed": fair.passed, "error": fair.error,
                               "speedups_vs_eager": speedups,
                               "within": all(abs(x - 1) <= FAIR_WITHIN for x in speedups) and bool(speedups),
                               "seconds": time.time() - t0, "ceilings": fair.ceilings})
        result["rows"] += shape_rows(fair, "baseline as candidate")
        result["cheats"].append({"op": spec.key, "cheat": "caches its first output", "caught": not cheat.passed,
                                 "message": cheat.failure_message()})
        lb = [s.shape for s in fair.shapes if s.launch_bound]
        print(f"{spec.key:22s} baseline-as-candidate passed={fair.passed} speedups={[round(x, 3) for x in speedups]}"
              f" launch-bound={lb} ({time.time() - t0:.0f} s)" + (f" error={fair.failure_message()}" if not fair.passed else ""),
              flush=True)
        print(f"{spec.key:22s} caching cheat caught={not cheat.passed}: {last_line(cheat.failure_message())[:150]}",
              flush=True)
        save()

    fair_ok = (all(f["passed"] and f["within"] for f in result["fair"]) and all(c["caught"] for c in result["cheats"])
               and result.get("fault_illegal_memory_access", {}).get("kind") == "cuda_error" and not result["skipped"])
    save("done" if not result["skipped"] else "done, some steps skipped (budget)")
    print(markdown(result))
    return 0 if fair_ok else 1


if __name__ == "__main__":
    sys.exit(main())
