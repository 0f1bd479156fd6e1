"""The verified kernels shipped in tasks/library/, streamed like a reply: `--llm-model library`,
the offline default that makes the tool usable with no key and no network.

The reply is the kernel file `tasks/library/L{level}/{op}.py` in a ```python fence, under one line
that says where it comes from. An operator with no library kernel gets its baseline file back,
labelled so (`Completion.origin == "baseline"`), which passes validation and measures ~1x: the
pipeline stays whole and nobody mistakes it for a kernel.

For a --cuda-only prompt the raw CUDA kernels are served instead, `tasks/library/L{level}/cuda/{op}.py`
(load_inline, no Triton). An operator with none has no answer there (the baseline is framework
compute, which --cuda-only rejects): the backend says so, and the agent stops that operator at once
instead of spending its retries.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastkernels.agent.llm.base import Completion, LLMError, RetryCallback, TextCallback
from fastkernels.agent.llm.replay import approx_tokens, stream_text
from fastkernels.registry.tasks import kernel_source, library_dir

LABEL = "library (verified kernels, not generated)"


CUDA_SUBDIR = "cuda"  # tasks/library/L{level}/cuda/{op}.py: the raw CUDA (--cuda-only) kernels


def library_kernel_path(level: int, op_name: str, cuda_only: bool = False) -> Path | None:
    base = library_dir(level) / CUDA_SUBDIR if cuda_only else library_dir(level)
    path = base / f"{op_name}.py"
    return path if path.is_file() else None


def as_reply(header: str, code: str) -> str:
    return f"{header}\n\n```python\n{code.rstrip()}\n```\n"


class LibraryBackend:
    name = "library"
    label = LABEL

    def __init__(self, *, chunk_chars: int = 256, chunk_delay: float = 0.0):
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay

    def generate(self, prompt, on_text: TextCallback, *, op, attempt: int,
                 on_retry: RetryCallback | None = None) -> Completion:
        start = time.monotonic()
        cuda_only = bool(getattr(prompt, "cuda_only", False))
        path = library_kernel_path(op.level, op.name, cuda_only)
        rel = f"tasks/library/L{op.level}/" + (f"{CUDA_SUBDIR}/" if cuda_only else "")
        if path is None and cuda_only:
            raise LLMError(f"the library has no raw CUDA kernel for {op.name} (L{op.level}; looked for "
                           f"{rel}{op.name}.py); use an LLM backend (--llm-model claude-...) for it", fatal=True)
        if path is not None:
            kind = "raw CUDA library kernel" if cuda_only else "library kernel"
            origin, model = "library", f"library:{path.parent.name}/{path.name}"
            header = f"Verified {kind} for {op.name} (L{op.level}), from {rel}{path.name}; not generated."
            code = kernel_source(path)  # whole: its shared pieces spliced in
        else:
            origin, model = "baseline", "library:baseline"
            header = (f"No library kernel for {op.name} (L{op.level}): this is the baseline implementation "
                      f"unchanged (tasks/baseline/L{op.level}/{op.name}.py); expect a speedup of about 1x.")
            code = op.source_code
        text = as_reply(header, code)
        stream_text(text, on_text, self.chunk_chars, self.chunk_delay)
        return Completion(
            text=text,
            input_tokens=0,
            output_tokens=approx_tokens(text),
            seconds=time.monotonic() - start,
            model=model,
            origin=origin,
        )
