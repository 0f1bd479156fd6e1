"""What the cockpit runs: model, level, backend and flags, their defaults, and the engine behind
them. Kept apart from the app so the CLI, the setup screen and the tests share one set of rules."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from fastkernels.agent.llm.base import DEFAULT_LLM_MODEL as DEFAULT_LLM
from fastkernels.models.catalog import DEFAULT_MODEL

OFFLINE_LLM = "library"


@dataclass
class SessionOptions:
    model: str = DEFAULT_MODEL
    level: int = 1
    tiny: bool = False
    llm_model: str = DEFAULT_LLM
    llm_base_url: str | None = None
    auto_approve: bool = False  # review is on in the cockpit unless asked otherwise
    cuda_only: bool = False
    max_retries: int = 5
    concurrency: int = 4
    out_dir: Path = Path("tasks/candidate")
    theme: str | None = None
    start: bool = False  # generate every operator as soon as they are discovered (no `g` needed)
    resume: bool = True  # continue the kernels already in out_dir (the agent's --resume)
    notes: list[str] = field(default_factory=list)  # what the defaults decided, said at start

    def with_(self, **kw) -> "SessionOptions":
        return replace(self, **kw)

    @property
    def title(self) -> str:
        return f"{self.model}{' (tiny)' if self.tiny else ''} · L{self.level}"


def has_nvidia_gpu() -> bool:
    from fastkernels.gpu.metrics import sample_once

    return sample_once().has_gpu


def resolve_defaults(model: str | None, level: int | None, tiny: bool, llm_model: str | None,
                     gpu: bool | None = None, **rest) -> SessionOptions:
    """Options from the command line; with no model on a machine without a GPU, the tiny Llama."""
    notes = []
    if gpu is None:
        gpu = has_nvidia_gpu()
    if model is None and not gpu and not tiny:
        tiny = True
        notes.append(f"No NVIDIA GPU here: starting on the tiny {DEFAULT_MODEL} at level {level or 1} "
                     "(Triton interpreter; timings are not meaningful).")
    from fastkernels.models.catalog import check_fits_without_gpu, resolve

    model = model or DEFAULT_MODEL
    resolve(model, tiny)  # an unknown model: its one-line error now, in the terminal
    check_fits_without_gpu(model, tiny, gpu)  # the end-to-end benchmark (b) must fit
    return SessionOptions(model=model, level=int(level or 1), tiny=tiny,
                          llm_model=llm_model or DEFAULT_LLM, notes=notes, **rest)


def missing_key(llm_model: str, base_url: str | None = None) -> str | None:
    """The environment variable a backend needs and lacks, or None."""
    if llm_model.startswith("claude"):
        return None if os.environ.get("ANTHROPIC_API_KEY") else "ANTHROPIC_API_KEY"
    if llm_model.startswith("openai:") and not base_url:  # a local server needs no key
        return None if os.environ.get("OPENAI_API_KEY") else "OPENAI_API_KEY"
    return None


AgentFactory = Callable[[SessionOptions, Callable], Any]


def real_agent_factory(opts: SessionOptions, sink) -> Any:
    """The engine's Agent for these options (imported late: the app starts before torch loads)."""
    from fastkernels.agent.agent import Agent, AgentConfig
    from fastkernels.models.catalog import check_fits_without_gpu
    from fastkernels.sandbox import cuda_present

    check_fits_without_gpu(opts.model, opts.tiny, gpu=cuda_present())  # `b` runs it end to end

    config = AgentConfig(
        model=opts.model, level=opts.level, tiny=opts.tiny, llm_model=opts.llm_model,
        llm_base_url=opts.llm_base_url, cuda_only=opts.cuda_only, max_retries=opts.max_retries,
        concurrency=opts.concurrency, out_dir=Path(opts.out_dir), auto_approve=opts.auto_approve,
        resume=opts.resume,
        # With review on, the end-to-end benchmark waits for approvals (`b`): run at the end of a
        # generation it could only say "no accepted kernel".
        e2e=opts.auto_approve,
    )
    return Agent(config, sink=sink)
