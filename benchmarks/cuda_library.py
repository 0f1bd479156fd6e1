"""--cuda-only end to end on the GPU: the agent with the raw CUDA library kernels, twice, and their
unit benchmark against eager, torch.compile and the Triton library kernels.

Stages (each writes <out>/<stage>.json; the markdown report is rebuilt from whatever is there, so a
run cut short can be continued with --stages):
  agent1  `fastkernels agent --model M --level 1 --cuda-only --llm-model library` in-process (the
          Agent API the CLI drives): every operator validated, unit-tested with the profiler's
          proof (its own kernel ran, no framework compute kernel did) and the accepted kernels
          benchmarked end to end. The CUDA build cache starts EMPTY (its folder is wiped), so
          every kernel compiles here, for this GPU's arch (sm_90a on an H100).
  agent2  the same again with the cache left as agent1 left it: every build must come from the
          cache (ninja finds it up to date; the build log shows compiled=false, ~0 s each).
  unit    run_unit of each CUDA library kernel (cuda_only: profiler-enforced) and of the Triton
          library kernel of the same operator, at the model's full shapes: correctness in every
          dtype, then eager / torch.compile / kernel device times of the first dtype (bf16).
Operators without a raw CUDA library kernel (attention) fail at once in the agent stages,
labelled so; the end-to-end run takes the kernels that passed.

    python benchmarks/cuda_library.py --out benchmarks/results/cuda_library          # on the GPU
    python benchmarks/cuda_library.py --out /tmp/cl --stages unit --ops rms_norm     # one piece

Needs torch, triton, transformers, nvcc and ninja (the package runs from this checkout; MLflow
tracking is off unless --track). On a machine without a GPU it stops with the one-line reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("agent1", "agent2", "unit")
CUDA_OPS = ("rms_norm", "add_rms_norm", "silu_and_mul", "rotary_embedding", "embedding")
DEFAULT_CACHE = Path("/tmp/fastkernels-cuda-bench-cache")


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class _Progress:
    """Event sink: one line per event that matters."""

    def __call__(self, event) -> None:
        name = type(event).__name__
        if name in ("TextDelta", "StreamReset"):
            return
        op = getattr(event, "op", "")
        detail = ""
        for attr in ("error", "reason", "passed", "status", "text"):
            value = getattr(event, attr, None)
            if value not in (None, ""):
                detail = f"{attr}={str(value).splitlines()[0][:160]}"
                break
        _say(f"  {name} {op} {detail}".rstrip())


def _build_summary(entries: list[dict]) -> dict:
    compiled = [e for e in entries if e.get("compiled")]
    cached = [e for e in entries if not e.get("compiled")]
    return {
        "builds": len(entries),
        "compiled": len(compiled),
        "cached": len(cached),
        "compile_seconds_total": round(sum(e["seconds"] for e in compiled), 2),
        "cached_seconds_max": round(max((e["seconds"] for e in cached), default=0.0), 3),
        "cached_seconds_median": round(sorted(e["seconds"] for e in cached)[len(cached) // 2], 3) if cached else None,
        "by_kernel": {name: {"compiled": sum(1 for e in entries if e["name"] == name and e.get("compiled")),
                             "cached": sum(1 for e in entries if e["name"] == name and not e.get("compiled")),
                             "seconds": [e["seconds"] for e in entries if e["name"] == name],
                             "arch": sorted({e.get("arch", "") for e in entries if e["name"] == name})}
                      for name in sorted({e["name"] for e in entries})},
        "failed": [e for e in entries if not e.get("ok")],
    }


def stage_agent(args, stage: str) -> dict:
    from fastkernels.agent.agent import Agent, AgentConfig
    from fastkernels.gpu.cuda_build import read_build_log

    out_dir = Path(args.out) / f"{stage}_candidates"
    shutil.rmtree(out_dir, ignore_errors=True)
    config = AgentConfig(model=args.model, level=1, cuda_only=True, llm_model="library", max_retries=args.max_retries,
                         out_dir=out_dir, e2e=not args.no_e2e, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                         ops=args.ops)
    start = time.time()
    agent = Agent(config, sink=_Progress())
    agent.discover()
    summary = agent.run()
    seconds = time.time() - start
    builds = read_build_log(since=start)
    return {"stage": stage, "argv": sys.argv[1:],
            "command": f"fastkernels agent --model {args.model} --level 1 --cuda-only --llm-model library",
            "seconds": round(seconds, 1), "summary": summary, "builds": _build_summary(builds), "build_log": builds}


def stage_unit(args) -> dict:
    from fastkernels.agent.llm.library import library_kernel_path
    from fastkernels.gpu.cuda_build import read_build_log
    from fastkernels.judge.gate import run_unit
    from fastkernels.registry.tasks import build_spec, kernel_source

    start = time.time()
    rows = {}
    for op in [o for o in CUDA_OPS if not args.ops or o in args.ops]:
        spec = build_spec(1, op, args.model, tiny=False)
        entry = {}
        for flavour, cuda_only in (("cuda", True), ("triton", False)):
            path = library_kernel_path(1, op, cuda_only=cuda_only)
            _say(f"unit {op} {flavour}: {path.relative_to(REPO)}")
            report = run_unit(spec, kernel_source(path), cuda_only=cuda_only)
            _say(f"  {'passed' if report.passed else 'FAILED: ' + report.failure_message()[:300]} ({report.seconds:.0f} s)")
            entry[flavour] = report.to_dict()
        rows[op] = entry
    return {"stage": "unit", "argv": sys.argv[1:], "model": args.model, "seconds": round(time.time() - start, 1), "ops": rows,
            "builds": _build_summary(read_build_log(since=start))}


# ---- the report ------------------------------------------------------------------------------------


def _fmt(x, spec=".3f", unit=""):
    return "-" if x is None else f"{format(x, spec)}{unit}"


def _agent_md(data: dict) -> list[str]:
    s, b = data["summary"], data["builds"]
    lines = [f"### {data['stage']}: `{data['command']}`", "",
             f"{s['passing']}/{s['total']} operators passing, {data['seconds']:.0f} s. Backend: {s['backend']}.", "",
             "| op | status | origin | attempts | best speedup vs eager | roofline | error |", "|---|---|---|---|---|---|---|"]
    for r in s["ops"]:
        err = (r.get("error") or "").splitlines()[0][:120] if r.get("error") else ""
        lines.append(f"| {r['op']} | {r['status']} | {r['origin']} | {r['attempts']} | {_fmt(r['speedup'], '.2f', 'x')} "
                     f"| {_fmt(r['roofline'], '.0%')} | {err} |")
    e2e = s.get("e2e")
    if e2e:
        lines += ["", f"End to end: passed={e2e.get('passed')} · {e2e.get('verdict', '')[:200]} · token match "
                      f"{_fmt(e2e.get('token_match'), '.3f')} (noise {_fmt(e2e.get('token_match_noise'), '.3f')}) · "
                      f"decode speedup {_fmt(e2e.get('speedup_decode'), '.2f', 'x')} · prefill speedup "
                      f"{_fmt(e2e.get('speedup_prefill'), '.2f', 'x')} · kernels {', '.join(e2e.get('candidates') or [])}"]
    lines += ["", f"CUDA builds in this stage: {b['builds']} ({b['compiled']} compiled, {b['cached']} from the cache); "
                  f"compile time {b['compile_seconds_total']} s; cache hits took at most {b['cached_seconds_max']} s "
                  f"(median {b['cached_seconds_median']} s).", "",
              "| kernel | arch | compiled | cached | seconds per build |", "|---|---|---|---|---|"]
    for name, k in b["by_kernel"].items():
        lines.append(f"| {name} | {', '.join(k['arch'])} | {k['compiled']} | {k['cached']} | "
                     f"{', '.join(f'{x:.2f}' for x in k['seconds'])} |")
    if b["failed"]:
        lines += ["", f"Failed or unloadable builds: {json.dumps(b['failed'])[:500]}"]
    return lines


def _unit_md(data: dict) -> list[str]:
    lines = [f"### unit: CUDA library kernels vs eager, torch.compile and the Triton library ({data['model']})", "",
             "Device times in ms (the unit benchmark's method, first dtype); speedups are the eager or compiled "
             "baseline's time (or the Triton kernel's) over the CUDA kernel's.", "",
             "| op | shape | dtype | eager | compile | triton | cuda | cuda vs eager | cuda vs compile | cuda vs triton "
             "| cuda roofline |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for op, entry in data["ops"].items():
        cuda, triton = entry["cuda"], entry["triton"]
        tri = {(r["shape"], r["dtype"]): r for r in triton.get("shapes", [])}
        for r in cuda.get("shapes", []):
            t = tri.get((r["shape"], r["dtype"]), {})
            if r.get("candidate_ms") is None and t.get("candidate_ms") is None:
                continue
            vs_t = t["candidate_ms"] / r["candidate_ms"] if t.get("candidate_ms") and r.get("candidate_ms") else None
            dims = ",".join(f"{k}={v}" for k, v in r["dims"].items() if k != "init")
            lines.append(f"| {op} | {r['shape']} [{dims}] | {r['dtype']} | {_fmt(r.get('baseline_eager_ms'), '.4f')} | "
                         f"{_fmt(r.get('baseline_compile_ms'), '.4f')} | {_fmt(t.get('candidate_ms'), '.4f')} | "
                         f"{_fmt(r.get('candidate_ms'), '.4f')} | {_fmt(r.get('speedup_vs_eager'), '.2f', 'x')} | "
                         f"{_fmt(r.get('speedup_vs_compile'), '.2f', 'x')} | {_fmt(vs_t, '.2f', 'x')} | "
                         f"{_fmt(r.get('roofline_fraction'), '.0%')} |")
        for name, rep in (("cuda", cuda), ("triton", triton)):
            bad = [f"{s['shape']} {s['dtype']}: {s['reason'][:160]}" for s in rep.get("shapes", []) if not s["passed"]]
            verdicts.append(f"- {op} {name}: {'PASS' if rep['passed'] else 'FAIL'} "
                            f"({sum(s['passed'] for s in rep.get('shapes', []))}/{len(rep.get('shapes', []))} shape x dtype "
                            f"cases){'; ' + rep['error'][:200] if rep.get('error') else ''}"
                            + "".join(f"\n  - {x}" for x in bad))
        note = cuda.get("timing_note")
    b = data["builds"]
    return lines + ["", "Correctness (every shape and dtype, fresh inputs, the profiler check for CUDA):", "", *verdicts,
                    "", f"Timing: {note if data['ops'] else '-'}",
                    "", f"CUDA builds in this stage: {b['builds']} ({b['compiled']} compiled, {b['cached']} from the cache)."]


def write_report(out: Path, args) -> None:
    results = {s: json.loads((out / f"{s}.json").read_text()) for s in STAGES if (out / f"{s}.json").is_file()}
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else _environment()
    md = ["# --cuda-only: raw CUDA library kernels on the GPU", "",
          f"{env['gpu']} · torch {env['torch']} (CUDA {env['torch_cuda']}) · nvcc {env['nvcc']} · build cache "
          f"{env['cache']}. Produced by:", ""]
    md += [f"    python benchmarks/cuda_library.py {' '.join(r.get('argv', []))}   # {s}" for s, r in results.items()] + [""]
    for stage in ("agent1", "agent2"):
        if stage in results:
            md += _agent_md(results[stage]) + [""]
    if "agent1" in results and "agent2" in results:
        a, b = results["agent1"]["builds"], results["agent2"]["builds"]
        ok = b["compiled"] == 0 and b["builds"] > 0
        md += [f"**Cache:** first run compiled {a['compiled']} of {a['builds']} builds ({a['compile_seconds_total']} s); "
               f"second run compiled {b['compiled']} of {b['builds']} ({'every build from the cache' if ok else 'NOT all cached'}, "
               f"at most {b['cached_seconds_max']} s each).", ""]
    if "unit" in results:
        md += _unit_md(results["unit"]) + [""]
    (out / "README.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps({"env": env, **results}, indent=1, default=str))


def _environment() -> dict:
    import subprocess

    import torch

    from fastkernels.gpu.cuda_build import cache_dir, find_nvcc

    nvcc = find_nvcc()
    version = "-"
    if nvcc:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        version = next((ln.split("release")[-1].strip() for ln in text.splitlines() if "release" in ln), "-")
    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU", "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "nvcc": version, "cache": str(cache_dir()),
            "python": platform.python_version(), "host": platform.node()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for README.md, results.json and each stage's JSON")
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    p.add_argument("--ops", default=None, help="comma-separated subset of operators (default: all)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help=f"the CUDA build cache to use (default {DEFAULT_CACHE})")
    p.add_argument("--keep-cache", action="store_true", help="agent1 starts from the cache as it is (default: wiped)")
    p.add_argument("--no-e2e", action="store_true", help="agent stages skip the end-to-end benchmark")
    p.add_argument("--prompt-len", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--max-retries", type=int, default=1, help="agent retries per operator (library replies repeat)")
    p.add_argument("--track", action="store_true", help="log the agent runs to MLflow (default: off)")
    p.add_argument("--report-only", action="store_true", help="rebuild README.md and results.json from the stage JSONs")
    args = p.parse_args()
    args.ops = [o.strip() for o in args.ops.split(",")] if args.ops else None
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {STAGES}")
    os.environ["FASTKERNELS_CACHE_DIR"] = str(Path(args.cache_dir).resolve())  # inherited by every sandbox job
    if not args.track:
        os.environ["FASTKERNELS_TRACKING"] = "0"
    from fastkernels.errors import FastKernelsError
    from fastkernels.gpu.cuda_build import cache_dir, preflight

    if args.report_only:
        write_report(Path(args.out), args)
        return 0
    try:
        preflight()
    except FastKernelsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(_environment(), indent=1))
    for stage in stages:
        _say(f"stage {stage}")
        if stage == "agent1" and not args.keep_cache:
            shutil.rmtree(cache_dir(), ignore_errors=True)
            _say(f"  build cache emptied: {cache_dir()}")
        data = stage_unit(args) if stage == "unit" else stage_agent(args, stage)
        (out / f"{stage}.json").write_text(json.dumps(data, indent=1, default=str))
        if "builds" in data:
            b = data["builds"]
            _say(f"  {stage}: {b['builds']} builds, {b['compiled']} compiled, {b['cached']} cached "
                 f"(max {b['cached_seconds_max']} s) in {data['seconds']:.0f} s")
        write_report(out, args)
    _say(f"report: {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
