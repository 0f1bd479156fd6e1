"""The cockpit, headless, over a whole agent run on a GPU machine: the app (driven by Textual's
pilot) runs one level of a model on the offline `library` backend with auto-approve (generate,
validate, unit-benchmark, end to end), then saves screenshots whose GPU panel shows the machine's
real NVML metrics, and a summary.

Run on the GPU machine from the repository root:

    PYTHONPATH=. python benchmarks/tui_h100.py --out benchmarks/results/tui_h100

It writes <out>/stream.svg, <out>/unit.svg, <out>/e2e.svg and <out>/summary.md, and exits 0 when
the GPU panel saw at least one NVIDIA GPU and every operator ended correct/approved.
`--tiny --allow-no-gpu` runs the same on a CPU machine (tiny model, Triton interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastkernels_tui.app import FastKernelsApp  # noqa: E402
from fastkernels_tui.options import SessionOptions  # noqa: E402

OK = ("approved", "correct", "pending review")


async def drive(app: FastKernelsApp, out: Path, timeout: float) -> dict:
    async with app.run_test(size=(180, 50)) as pilot:
        t0 = time.monotonic()
        while app.agent is None or not app.main.views:
            if time.monotonic() - t0 > 300:
                raise SystemExit("the engine did not start in 300 s (see the status pane)")
            await pilot.pause(0.2)
        await pilot.press("g")
        await pilot.pause(1.0)
        while app.running():
            if time.monotonic() - t0 > timeout:
                app.agent.cancel()
                raise SystemExit(f"the run did not finish in {timeout:.0f} s")
            await pilot.pause(1.0)
        await pilot.pause(1.5)  # two more metrics samples after the run
        seconds = time.monotonic() - t0
        app.save_screenshot("stream.svg", str(out))
        await pilot.press("n")
        await pilot.pause(0.3)
        app.save_screenshot("unit.svg", str(out))
        app.main.show_tab("e2e")  # the report of the run's own end-to-end benchmark
        await pilot.pause(0.3)
        app.save_screenshot("e2e.svg", str(out))
        views = {name: (v.status, v.attempt, v.best_speedup) for name, v in app.main.views.items()}
        return {"seconds": seconds, "views": views, "metrics": app.last_metrics, "log": list(app.main.log_lines),
                "e2e": app.agent.e2e_report.to_dict() if getattr(app.agent, "e2e_report", None) else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct")
    p.add_argument("--level", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default="benchmarks/results/tui_h100")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--allow-no-gpu", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fk-tui-"))
    opts = SessionOptions(model=args.model, level=args.level, tiny=args.tiny, llm_model="library",
                          auto_approve=True, out_dir=work / "candidate", theme="fastkernels-ember")
    app = FastKernelsApp(opts, remember=False)
    r = asyncio.run(drive(app, out, args.timeout))
    snap = r["metrics"]
    gpus = [f"GPU{g.index} {g.name}: util {g.util_pct:.0f}%, mem {g.mem_used_mb / 1024:.1f}/{g.mem_total_mb / 1024:.0f} GiB, "
            f"{g.temp_c} °C, {g.power_w} W, SM {g.sm_clock_mhz} MHz" for g in (snap.gpus if snap else ())]
    lines = [f"# Cockpit headless run: {args.model}{' (tiny)' if args.tiny else ''} L{args.level}, library backend", "",
             f"Command: `PYTHONPATH=. python benchmarks/tui_h100.py {' '.join(sys.argv[1:])}`", "",
             f"- Wall time of the run in the app: {r['seconds']:.0f} s",
             f"- GPU panel: {'; '.join(gpus) if gpus else (snap.gpu_note if snap else 'no sample')}", "",
             "| operator | status | attempts | best speedup |", "|---|---|---|---|"]
    for name, (status, attempt, speed) in r["views"].items():
        lines.append(f"| {name} | {status} | {attempt} | {f'{speed:.2f}x' if speed else '-'} |")
    e2e = r["e2e"] or {}
    lines += ["", f"End to end (the run's own benchmark, {e2e.get('device', '-')}): "
              f"{'PASS' if e2e.get('passed') else 'FAIL'} · {e2e.get('verdict', 'not run')}"]
    lines += ["", "Status pane at the end:", "", *[f"    {line}" for line in r["log"][-8:]], "",
              "Screenshots: stream.svg, unit.svg, e2e.svg"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    ok = all(s in OK for s, _, _ in r["views"].values()) and (bool(gpus) or args.allow_no_gpu)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
