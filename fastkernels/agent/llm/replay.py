"""Recorded replies, played back as a stream: `--llm-model replay:<dir>`. For tests and demos.

Layout of <dir> (attempts count from 1, as the agent numbers them):

    <dir>/<op>/<attempt>.md     the reply to attempt <attempt> of operator <op> (e.g. rms_norm/1.md)
    <dir>/<op>.md               the reply to every attempt of <op> that has no numbered file

A numbered folder wins; an attempt past the last numbered file gets the last one (so a folder
holding 1.md (broken) and 2.md (fixed) answers every later attempt with the fix). Files are the
raw reply text, fences and prose included, exactly what an LLM sent.

`RecordingBackend(inner, dir)` (or `get_backend(..., record_to=dir)`) writes every reply of
another backend in this layout, plus the prompt beside it as <attempt>.prompt.md, so a live run
can be replayed offline.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from fastkernels.agent.llm.base import (
    Completion,
    LLMError,
    RetryCallback,
    TextCallback,
    split_prompt,
)
from fastkernels.errors import UsageError

_ATTEMPT_FILE = re.compile(r"^(\d+)\.md$")


def stream_text(text: str, on_text: TextCallback, chunk_chars: int, chunk_delay: float) -> None:
    """Hand `text` to on_text in pieces, as a network stream would."""
    step = max(1, chunk_chars)
    for i in range(0, len(text), step):
        on_text(text[i : i + step])
        if chunk_delay:
            time.sleep(chunk_delay)


def approx_tokens(text: str) -> int:
    # ~4 characters per token for code and English with the Claude and GPT tokenizers.
    return (len(text) + 3) // 4


def reply_path(directory: Path, op_name: str, attempt: int) -> Path | None:
    """The recorded reply for one attempt, by the rules in the module docstring; None if there is none."""
    folder = directory / op_name
    if folder.is_dir():
        numbered = {}
        for p in folder.iterdir():
            m = _ATTEMPT_FILE.match(p.name)
            if m and p.is_file():
                numbered[int(m.group(1))] = p
        if attempt in numbered:
            return numbered[attempt]
        earlier = [n for n in numbered if n <= attempt]
        if earlier:
            return numbered[max(earlier)]
    single = directory / f"{op_name}.md"
    return single if single.is_file() else None


class ReplayBackend:
    name = "replay"

    def __init__(self, directory: str | os.PathLike, *, chunk_chars: int = 64, chunk_delay: float = 0.0):
        self.directory = Path(directory).expanduser()
        if not str(directory) or not self.directory.is_dir():
            raise UsageError(f"--llm-model replay:{directory}: no such folder of recorded replies "
                             "(expected <dir>/<op>/<attempt>.md or <dir>/<op>.md)")
        self.label = f"replay:{self.directory} (recorded replies)"
        self.chunk_chars = chunk_chars
        self.chunk_delay = chunk_delay

    def generate(self, prompt, on_text: TextCallback, *, op, attempt: int,
                 on_retry: RetryCallback | None = None) -> Completion:
        start = time.monotonic()
        path = reply_path(self.directory, op.name, attempt)
        if path is None:
            raise LLMError(f"replay: no recorded reply for {op.name} attempt {attempt} in {self.directory} "
                           f"(add {op.name}/{attempt}.md or {op.name}.md)", fatal=True)
        text = path.read_text()
        stream_text(text, on_text, self.chunk_chars, self.chunk_delay)
        return Completion(
            text=text,
            input_tokens=approx_tokens("".join(split_prompt(prompt))),
            output_tokens=approx_tokens(text),
            seconds=time.monotonic() - start,
            model=f"replay:{path.relative_to(self.directory)}",
            origin="replay",
        )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RecordingBackend:
    """Wraps a backend and records each reply under `directory` in the replay layout."""

    def __init__(self, inner, directory: str | os.PathLike):
        self.inner = inner
        self.directory = Path(directory).expanduser()
        self.name = inner.name
        self.label = inner.label

    def generate(self, prompt, on_text: TextCallback, *, op, attempt: int,
                 on_retry: RetryCallback | None = None) -> Completion:
        completion = self.inner.generate(prompt, on_text, op=op, attempt=attempt, on_retry=on_retry)
        folder = self.directory / op.name
        _write_atomic(folder / f"{attempt}.md", completion.text)
        if prompt is not None:
            system, user = split_prompt(prompt)
            _write_atomic(folder / f"{attempt}.prompt.md", f"# system\n\n{system}\n\n# user\n\n{user}\n")
        return completion
