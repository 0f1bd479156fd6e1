"""`fastkernels tui`: the cockpit as a subcommand, contributed through the `fastkernels.commands`
entry-point group (the engine's CLI never imports Textual)."""

from __future__ import annotations

import argparse

from fastkernels.agent.llm.base import DEFAULT_LLM_MODEL

HELP = "open the cockpit: generate, review, edit and benchmark kernels, watch the GPU"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="HF model id or local path (default Llama-3.1-8B-Instruct; its tiny variant without a GPU)")
    p.add_argument("--level", type=int, default=None, help="1 kernels (default), 2 blocks, 3 decoder layers, 4 whole model")
    p.add_argument("--tiny", action="store_true", help="the same architecture shrunk so a CPU runs it in seconds")
    p.add_argument("--llm-model", default=None,
                   help=f"claude-<model> (default {DEFAULT_LLM_MODEL}), openai:<model>, replay:<dir> or library (offline)")
    p.add_argument("--llm-base-url", default=None, help="base URL of an OpenAI-compatible server")
    p.add_argument("--theme", default=None, help="a theme name (themes/*.toml or a Textual theme); remembered")
    p.add_argument("--auto-approve", action="store_true",
                   help="no review: every correct kernel is approved and the run ends with the e2e benchmark")
    p.add_argument("--start", action="store_true", help="generate every operator at once (as pressing g)")
    p.add_argument("--fresh", action="store_true",
                   help="ignore the kernels already in the output folder (by default the cockpit shows and "
                        "continues them: g generates only the operators without an accepted kernel)")
    p.add_argument("--cuda-only", action="store_true", help="raw CUDA kernels only")
    p.add_argument("--max-retries", type=int, default=5, help="attempts after the first, per operator")
    p.add_argument("--out", "--out-dir", dest="out_dir", default="tasks/candidate",
                   help="where kernels are saved (default tasks/candidate), as `fastkernels agent --out`")


def options_from_args(args: argparse.Namespace, gpu: bool | None = None):
    from pathlib import Path

    from fastkernels.registry.tasks import check_level
    from fastkernels_tui.options import resolve_defaults

    level = check_level(args.level) if args.level is not None else None
    return resolve_defaults(
        args.model, level, args.tiny, args.llm_model, gpu=gpu, llm_base_url=args.llm_base_url,
        auto_approve=args.auto_approve, cuda_only=args.cuda_only, max_retries=args.max_retries,
        out_dir=Path(args.out_dir), theme=args.theme, start=args.start, resume=not args.fresh,
    )


def run(args: argparse.Namespace) -> int:
    import atexit
    import os
    import sys

    from fastkernels_tui.app import FastKernelsApp

    app = FastKernelsApp(options_from_args(args))
    app.run()
    code = int(app.return_code or 0)
    # The process ends here, without the interpreter's teardown: after a session that loaded torch,
    # transformers and MLflow it took 2.4 s on a 2-core machine (the exit handlers: 10 ms), and
    # after a quit that cancelled a run Python would also wait for any thread still winding down
    # (its jobs are killed already). The exit handlers still run: the tracker writes what it holds.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def command():
    """(help, add_args, run) for `fastkernels tui`."""
    return HELP, add_args, run
