"""`fastkernels` command line. Each subcommand is a pair: `_args_<name>(parser)` declares its
flags, `_cmd_<name>(args) -> int` runs it. Errors a user can hit (FastKernelsError) print as one
line and exit 2; anything else is our bug and keeps its traceback. Commands contributed by other
packages (the cockpit's `tui`) come in through the `fastkernels.commands` entry-point group."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from importlib.metadata import entry_points
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fastkernels.agent.llm.base import DEFAULT_LLM_MODEL
from fastkernels.errors import FastKernelsError, UsageError
from fastkernels.models.catalog import DEFAULT_MODEL

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def add_model_args(p: argparse.ArgumentParser, *, level_required: bool = True) -> None:
    """--model/--level/--tiny, shared by every command that works on a model's operators."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"HF model id or local path (default {DEFAULT_MODEL})")
    p.add_argument("--level", required=level_required, default=None if level_required else 1,
                   help="1 kernels, 2 blocks, 3 decoder layers, 4 whole model")
    p.add_argument("--tiny", action="store_true", help="the same architecture shrunk so a CPU runs it in seconds")


# ---- list -------------------------------------------------------------------------------------

def _args_list(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--tp", type=int, default=1, help="show one of N tensor-parallel ranks' shapes")


def _fmt_shape(shape: dict) -> str:
    dims = ",".join(f"{k}={v}" for k, v in shape.items() if k != "init")
    init = shape.get("init")
    return dims + (f" [{','.join(f'{k}={v}' for k, v in init.items())}]" if init else "")


def _cmd_list(args) -> int:
    from fastkernels.agent.agent import discover_operators
    from fastkernels.models.catalog import resolve

    workload = None
    if args.tp != 1:
        import dataclasses

        from fastkernels.models.sharding import check_tp, check_tp_level
        from fastkernels.registry.tasks import Workload, check_level

        check_tp_level(check_level(args.level), args.tp)
        check_tp(resolve(args.model, args.tiny).hf_config(), args.tp, args.model)
        workload = dataclasses.replace(Workload.default(small=args.tiny), tp=args.tp)
    specs = discover_operators(args.model, args.level, tiny=args.tiny, workload=workload)
    entry = resolve(args.model, args.tiny)
    table = Table(title=f"{entry.display_name} · level {specs[0].level if specs else args.level} · {len(specs)} operators")
    table.add_column("operator", style="bold")
    table.add_column("class")
    table.add_column("stands for (HF)")
    table.add_column("shapes")
    table.add_column("used by")
    for s in specs:
        shapes = "\n".join(f"{name}: {_fmt_shape(sh)}" for name, sh in s.shapes.items())
        families = sorted(s.families)
        table.add_row(s.name, s.class_name, s.stands_for, shapes, f"{len(s.models)} models\n({', '.join(families)})")
    console.print(table)
    return 0


# ---- agent ------------------------------------------------------------------------------------

def _args_agent(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--cuda-only", action="store_true", help="raw CUDA kernels (load_inline), no Triton")
    p.add_argument("--max-retries", type=int, default=5, help="attempts after the first, with the error fed back")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel processes of the end-to-end benchmark (levels 1-2); kernels get one rank's shapes")
    p.add_argument("--llm-model", default=DEFAULT_LLM_MODEL,
                   help="claude-*, openai:<name> (with --llm-base-url), replay:<dir>, or library (offline)")
    p.add_argument("--llm-base-url", default=None, help="base URL of an OpenAI-compatible server")
    p.add_argument("--skip-unit-tests", action="store_true", help="validate only; no per-operator benchmark")
    p.add_argument("--ops", default=None, help="comma-separated subset of operators")
    p.add_argument("--resume", action="store_true", help="keep kernels already accepted in --out; do the rest")
    p.add_argument("--concurrency", type=int, default=4, help="operators generated at once")
    p.add_argument("--out", default="tasks/candidate", help="where kernels land (L{level}/{op}.py)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end benchmark")
    p.add_argument("--prompt-len", type=int, default=None, help="end-to-end prompt length")
    p.add_argument("--new-tokens", type=int, default=None, help="end-to-end tokens to generate")
    add_tracking_args(p)


def _cmd_agent(args) -> int:
    from pathlib import Path

    from fastkernels.agent.agent import Agent, AgentConfig
    from fastkernels.agent.progress import LiveProgress, e2e_line, summary_table

    if args.cuda_only:  # one line now, not a failed build per operator later
        from fastkernels.gpu.cuda_build import preflight

        preflight()

    config = AgentConfig(
        model=args.model, level=args.level, tiny=args.tiny, llm_model=args.llm_model,
        llm_base_url=args.llm_base_url, cuda_only=args.cuda_only, max_retries=args.max_retries,
        skip_unit_tests=args.skip_unit_tests, concurrency=args.concurrency,
        ops=[o.strip() for o in args.ops.split(",") if o.strip()] if args.ops else None,
        resume=args.resume, out_dir=Path(args.out), tp=args.tp, e2e=not args.no_e2e,
        prompt_len=args.prompt_len, new_tokens=args.new_tokens,
    )
    progress = LiveProgress(console, f"{args.model}{' (tiny)' if args.tiny else ''} · level {config.level}")
    agent = Agent(config, sink=progress)
    agent.discover()
    with progress:
        summary = agent.run()
    console.print(summary_table(summary))
    e2e = agent.e2e_report
    if e2e is not None:
        from fastkernels.measure.e2e import report_renderables

        for part in report_renderables(e2e)[:-1]:  # the verdict: next line
            console.print(part)
    console.print(e2e_line(e2e))
    console.print(f"saved: {agent.summary_path()}")
    if summary.get("interrupted"):
        err_console.print("interrupted: the summary holds what was done; --resume continues")
        return 130
    return 0 if summary["passing"] == summary["total"] and (e2e is None or e2e.passed) else 1


# ---- tracking: --tracking-uri, history, mlflow-ui ----------------------------------------------

def add_tracking_args(p: argparse.ArgumentParser) -> None:
    """--tracking-uri/--no-tracking for a command that logs to MLflow; `main` applies them."""
    p.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else a SQLite file in the user data dir)")
    p.add_argument("--no-tracking", action="store_true", help="record nothing in MLflow")


def _apply_tracking_args(args) -> None:
    uri, off = getattr(args, "tracking_uri", None), getattr(args, "no_tracking", False)
    if uri or off:
        from fastkernels.track.tracking import (
            tracker,  # cheap: MLflow itself loads on first use
        )

        tracker.configure(uri, enabled=False if off else None)


def _args_history(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="show one run's kernels and results (an id or its prefix)")
    p.add_argument("--model", default=None, help="only runs of this model")
    p.add_argument("--level", default=None, help="only runs at this level")
    p.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow store to read (default as `agent`)")


def _cmd_history(args) -> int:
    import json

    from fastkernels.errors import UsageError
    from fastkernels.track import history
    from fastkernels.track.tracking import resolve_tracking_uri

    fmt = history.fmt_value
    if args.run_id:
        d = history.get_run(args.run_id, uri=args.tracking_uri)
        if args.json:
            sys.stdout.write(json.dumps(d.to_dict(), indent=2) + "\n")
            return 0
        s = d.summary
        console.print(f"[bold]{escape(str(s.name))}[/] {s.run_id} · {s.when} · {s.status}")
        console.print(f"{s.model} · level {s.level} · {s.backend} · gpu {d.params.get('gpu', '-')} · "
                      + " ".join(f"{k.removeprefix('env.')} {v}" for k, v in d.params.items()
                                 if k in ("env.torch", "env.triton", "env.transformers")))
        wide = console.width >= 130  # the artifact path only where it fits (it is in --json anyway)
        table = Table(title=f"kernels: {s.kernels_passing}/{s.kernels_total} passing")
        for col in ("op", "level", "attempt", "backend", "status", "correct", "speedup", "vs compile") + (("artifact",) if wide else ()):
            table.add_column(col, overflow="fold")
        for k in d.kernels:
            row = [k.op, fmt(k.level), fmt(k.attempt), fmt(k.backend), fmt(k.status), fmt(k.correct),
                   fmt(k.speedup, "x"), fmt(k.speedup_compile, "x")]
            table.add_row(*row, *((fmt(k.artifact),) if wide else ()))
        console.print(table)
        if d.e2e:
            console.print("end to end: " + " · ".join(f"{k} {fmt(bool(v) if k == 'passed' else v)}"
                                                    for k, v in sorted(d.e2e.items())))
        console.print(f"artifacts: {d.artifact_uri}")
        return 0
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: give a positive number of runs")
    runs = history.list_runs(model=args.model, level=args.level, limit=args.limit, uri=args.tracking_uri)
    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in runs], indent=2) + "\n")
        return 0
    if not runs:
        console.print(f"no tracked runs{' matching the filters' if args.model or args.level else ''} "
                      f"in {resolve_tracking_uri(args.tracking_uri)}")
        return 0
    if console.width < 110:  # a narrow terminal: two lines per run instead of a squeezed table
        console.print(f"{len(runs)} runs, newest first · {resolve_tracking_uri(args.tracking_uri)}")
        for r in runs:
            best = ", ".join(f"{op} {fmt(x, 'x')}" for op, x in r.best_speedups) or "-"
            console.print(f"[bold]{r.when}[/]  {r.run_id[:8]}  {r.status}  {escape(str(r.model))}  L{r.level}  {escape(str(r.backend))}")
            console.print(f"    passing {r.kernels_passing}/{r.kernels_total} · best {best} · "
                          f"e2e match {fmt(r.e2e_token_match)} · e2e speedup {fmt(r.e2e_speedup, 'x')}")
        return 0
    from rich import box

    table = Table(title=f"{len(runs)} runs, newest first · {resolve_tracking_uri(args.tracking_uri)}",
                  box=box.SIMPLE_HEAD)
    for col, kw in (("when", {"no_wrap": True}), ("run", {"no_wrap": True}), ("model", {"overflow": "fold"}),
                    ("level", {}), ("backend", {"overflow": "fold"}), ("status", {}), ("passing", {"no_wrap": True}),
                    ("best speedups", {"min_width": 14}), ("e2e match", {}), ("e2e speedup", {})):
        table.add_column(col, **kw)
    for r in runs:
        best = ", ".join(f"{op} {fmt(x, 'x')}" for op, x in r.best_speedups) or "-"
        table.add_row(r.when, r.run_id[:8], r.model, r.level, r.backend, r.status,
                      f"{r.kernels_passing}/{r.kernels_total}", best, fmt(r.e2e_token_match), fmt(r.e2e_speedup, "x"))
    console.print(table)
    return 0


def _args_mlflow_ui(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--tracking-uri", default=None, metavar="URI", help="MLflow store to serve (default as `agent`)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _cmd_mlflow_ui(args) -> int:
    import signal

    from fastkernels.errors import ResourceError
    from fastkernels.track import history
    from fastkernels.track.tracking import resolve_tracking_uri

    proc, url = history.start_mlflow_ui(args.port, args.tracking_uri)
    # SIGTERM ends us like Ctrl-C, so the server's whole process group is stopped below.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        console.print(f"MLflow UI at {url} (store: {resolve_tracking_uri(args.tracking_uri)}); starting...")
        if not history.wait_mlflow_ui(proc, url):
            raise ResourceError(f"the MLflow server did not come up on {url} (exit code {proc.poll()}); "
                                "see its messages above")
        console.print(f"ready: {url}  (Ctrl-C stops it)")
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        console.print("stopping the MLflow UI")
        return 0
    finally:
        history.stop_mlflow_ui(proc)
        signal.signal(signal.SIGTERM, previous)


# ---- bench ------------------------------------------------------------------------------------

def _args_bench(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--candidates", default=None,
                   help="directory laid out like tasks/candidate (L<level>/<op>.py); default ./tasks/candidate")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (default 128; 8 with --tiny)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default 32; 8 with --tiny)")
    p.add_argument("--batch", type=int, default=1, help="sequences at once")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if present)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and the prompt")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel processes: one per GPU (NCCL), or gloo on CPU (levels 1-2)")
    p.add_argument("--out", default=None, help="also write the report as JSON to this file")
    add_tracking_args(p)


def _cmd_bench(args) -> int:
    """`fastkernels bench`: run, print, optionally write the JSON report; 0 pass, 1 fail."""

    from fastkernels import events as ev
    from fastkernels.measure.e2e import default_candidates_dir, report_renderables, run_benchmark
    from fastkernels.track.tracking import tracker

    candidates = Path(args.candidates) if args.candidates else default_candidates_dir()
    if not candidates.is_dir():
        raise UsageError(f"no candidate directory at {candidates}: run `fastkernels agent` first or pass "
                         "--candidates DIR (laid out like tasks/candidate: L<level>/<op>.py)")
    lock = threading.Lock()

    def sink(event) -> None:
        if isinstance(event, ev.E2EProgress):
            with lock:
                console.print(f"[dim]{escape(f'[{event.stage} {event.done}/{event.total}]')}[/] {escape(event.detail)}")

    params = {"model": args.model, "level": args.level, "tiny": args.tiny, "candidates": str(candidates),
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch": args.batch, "seed": args.seed,
              "tp": getattr(args, "tp", 1)}
    with tracker.start_run(f"bench {args.model}{' (tiny)' if args.tiny else ''} L{args.level}", params=params,
                           root=True) as run:
        report = run_benchmark(args.model, args.level, candidates, tiny=args.tiny, prompt_len=args.prompt_len,
                               new_tokens=args.new_tokens, batch=args.batch, device=args.device, seed=args.seed,
                               sink=sink, tp=getattr(args, "tp", 1))
        run.log_e2e(report)
    for item in report_renderables(report):
        console.print(item)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"report written to {args.out}")
    return 0 if report.passed else 1


# ---- check ------------------------------------------------------------------------------------

def _args_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="a kernel file defining the operator's class")
    add_model_args(p)
    p.add_argument("--op", default=None, help="operator name (default: the one whose class FILE defines)")
    p.add_argument("--cuda-only", action="store_true", help="raw CUDA only: no Triton, no framework compute ops")
    p.add_argument("--seeds", type=int, default=3, help="fresh random inputs per shape and dtype (default 3)")
    p.add_argument("--no-timing", action="store_true", help="correctness only")
    p.add_argument("--json", dest="json_out", default=None, help="also write the unit report as JSON to this file")


def _cmd_check(args) -> int:
    """Validate and unit-test one kernel file: the same gate the agent uses."""
    import ast
    import json
    from pathlib import Path

    from fastkernels.errors import UsageError
    from fastkernels.judge.gate import run_gate
    from fastkernels.registry.tasks import Workload, check_level, discover
    from fastkernels.sandbox import cuda_present

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no kernel file at {path}: pass the path of a .py file defining the operator's class")
    if args.cuda_only:
        from fastkernels.gpu.cuda_build import preflight

        preflight()
    from fastkernels.registry.tasks import kernel_source

    try:
        code = kernel_source(path)  # a library file comes with its shared pieces spliced in
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text file (not UTF-8): pass the kernel's Python source") from None
    level = check_level(args.level)
    small = args.tiny or not cuda_present()  # the interpreter only gets through small shapes
    specs = discover(args.model, level, tiny=args.tiny, workload=Workload.default(small=small))
    if args.op:
        spec = next((s for s in specs if s.name == args.op), None)
        if spec is None:
            raise UsageError(f"no operator {args.op!r} at level {level} of {args.model}; "
                             f"choose one of: {', '.join(s.name for s in specs)}")
    else:
        try:
            classes = {n.name for n in ast.parse(code).body if isinstance(n, ast.ClassDef)}
        except SyntaxError:
            classes = set()
        matches = [s for s in specs if s.class_name in classes]
        if len(matches) != 1:
            known = ", ".join(f"{s.name} ({s.class_name})" for s in specs)
            raise UsageError(f"cannot tell which operator {path.name} implements; pass --op (one of: {known})")
        spec = matches[0]
    where = "GPU" if cuda_present() else "CPU, Triton interpreter, small shapes"
    console.print(f"[bold]{spec.key}[/] {spec.class_name} · {args.model}{' (tiny)' if args.tiny else ''} · {where}")
    # The agent's own gate: validation and the unit benchmark in one sandboxed child.
    result, report = run_gate(spec, code, seeds=args.seeds, timing=not args.no_timing, cuda_only=args.cuda_only)
    if not result.ok:
        console.print(f"[bold red]invalid[/] ({result.stage}): {escape(result.error)}")
        return 1
    console.print("[green]valid[/]: imports and constructs")
    timed = any(s.candidate_ms is not None for s in report.shapes)
    table = Table(title=f"unit test · {report.device}")
    cols = ["shape", "dtype", "verdict", "max err/rms"]
    if timed:
        # device time (launch hidden), then wall time per back-to-back call (launch included)
        cols += ["eager ms", "compile ms", "kernel ms", "speedup", "vs compile", "roofline",
                 "wall us kernel/compile", "wall vs compile"]
    for col in cols:
        table.add_column(col)

    def num(x, fmt):
        return format(x, fmt) if x is not None else "-"

    for s in report.shapes:
        row = [f"{s.shape} {_fmt_shape(s.dims)}", s.dtype, "[green]pass[/]" if s.passed else "[red]FAIL[/]",
               num(s.max_rel_err, ".1e")]
        if timed:
            roof = f"{100 * s.roofline_fraction:.0f}%" if s.roofline_fraction is not None else "-"
            wall = (f"{1e3 * s.candidate_wall_ms:.1f}/{num(s.baseline_compile_wall_ms and 1e3 * s.baseline_compile_wall_ms, '.1f')}"
                    if s.candidate_wall_ms is not None else "-")
            row += [num(s.baseline_eager_ms, ".4f"), num(s.baseline_compile_ms, ".4f"), num(s.candidate_ms, ".4f"),
                    num(s.speedup_vs_eager, ".2f"), num(s.speedup_vs_compile, ".2f"), roof, wall,
                    num(s.speedup_wall_vs_compile, ".2f")]
        table.add_row(*row)
    if report.shapes:
        console.print(table)
    for s in report.shapes:
        if not s.passed:
            console.print(f"[red]{s.shape} {s.dtype}:[/] {escape(s.reason)}")
    if report.timing_note:
        console.print(f"timings: {report.timing_note}")
    if report.error:
        console.print(f"[bold red]error:[/] {escape(report.error)}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report.to_dict(), indent=2))
    console.print(("[bold green]PASSED[/]" if report.passed else "[bold red]FAILED[/]") + f" in {report.seconds:.1f} s")
    return 0 if report.passed else 1


# ---- export -----------------------------------------------------------------------------------

def _args_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="kernels laid out like tasks/candidate (L<level>/<op>.py), e.g. tasks/library")
    p.add_argument("--out", required=True, help="folder to write the kernel repository to")
    p.add_argument("--name", default=None, help="kernel name (default fastkernels-<DIR's folder name>)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")


def _cmd_export(args) -> int:
    from fastkernels.export import export_kernels

    result = export_kernels(args.dir, args.out, name=args.name, force=args.force)
    console.print(f"[bold]{result.name}[/]: {len(result.kernels)} kernel files -> {result.out}")
    console.print(f"layers: {', '.join(result.layers) or 'none'}; "
                  f"results: {'from the agent summary' if result.measured else 'not measured'}")
    console.print(f"load it: kernels.get_local_kernel(Path({str(result.out)!r})) · see {result.out / 'README.md'}")
    return 0


# ---- dispatch ---------------------------------------------------------------------------------

COMMANDS = {
    "list": ("list the operators of a model at a level", _args_list, _cmd_list),
    "agent": ("generate, validate and benchmark kernels for every operator of a model", _args_agent, _cmd_agent),
    "bench": ("patch candidate kernels into the model: shadow check, token match, speedup", _args_bench, _cmd_bench),
    "history": ("past runs from the MLflow store: kernels passing, speedups, end to end", _args_history, _cmd_history),
    "check": ("validate and unit-test one kernel file (the agent's gate): verdicts and timings per shape", _args_check, _cmd_check),
    "export": ("write kernels as a Hugging Face `kernels` repository (build.toml, torch-ext, layers, card)",
               _args_export, _cmd_export),
    "mlflow-ui": ("serve the MLflow UI for the tracking store on 127.0.0.1", _args_mlflow_ui, _cmd_mlflow_ui),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastkernels", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    for ep in entry_points(group="fastkernels.commands"):
        try:
            help_text, add_args, run = ep.load()()
        except ImportError as exc:  # the contributing package is broken or half-installed
            err_console.print(f"[yellow]warning:[/] command {ep.name!r} unavailable: {exc}")
            continue
        p = sub.add_parser(ep.name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Piped into a log, rich would squeeze tables into 80 columns; COLUMNS still wins when set.
    console.width = 160 if not console.is_terminal and "COLUMNS" not in os.environ else None
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler, `timeout`, `kill`) stops a command the way Ctrl-C does: the agent writes
    # its summary and marks the run interrupted; sandboxed jobs die with this process either way.
    import signal

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        _apply_tracking_args(args)
        return int(args._run(args) or 0)
    except FastKernelsError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
