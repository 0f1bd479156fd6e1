"""LLM backends, one file each behind one protocol (base.LLMBackend), picked from --llm-model:

    claude-<...> | anthropic:<model>   Anthropic Messages API, streamed (needs ANTHROPIC_API_KEY)
    openai:<model>                     any OpenAI-compatible server (--llm-base-url), streamed
    replay:<dir>                       recorded replies (see replay.py for the layout)
    library                            the verified kernels of tasks/library/, offline

The network SDKs are imported only when their backend is built: library and replay run where
neither `anthropic` nor `openai` is installed.
"""

from __future__ import annotations

from fastkernels.agent.llm.base import (
    AuthError,
    Completion,
    GenerationCancelled,
    LLMBackend,
    LLMError,
    RetryNotice,
    RetryPolicy,
)
from fastkernels.agent.llm.base import DEFAULT_LLM_MODEL
from fastkernels.errors import UsageError

__all__ = [
    "AuthError",
    "Completion",
    "DEFAULT_LLM_MODEL",
    "GenerationCancelled",
    "LLMBackend",
    "LLMError",
    "RetryNotice",
    "RetryPolicy",
    "get_backend",
]


def get_backend(llm_model: str = DEFAULT_LLM_MODEL, base_url: str | None = None, *,
                record_to: str | None = None, **opts) -> LLMBackend:
    """The backend that --llm-model names. `opts` go to the backend's constructor (api_key,
    max_tokens, timeout, network_retries, backoff_base, backoff_max, chunk_chars, chunk_delay...);
    `record_to=DIR` records every reply in the replay layout. Raises UsageError (one line) for a
    model it cannot serve: unknown form, missing key, missing SDK, missing replay folder."""
    spec = (llm_model or "").strip()
    if spec == "library":
        from fastkernels.agent.llm.library import LibraryBackend

        backend = LibraryBackend(**opts)
    elif spec.startswith("replay:"):
        from fastkernels.agent.llm.replay import ReplayBackend

        backend = ReplayBackend(spec.removeprefix("replay:"), **opts)
    elif spec.startswith("openai:"):
        from fastkernels.agent.llm.openai_backend import OpenAIBackend

        backend = OpenAIBackend(spec.removeprefix("openai:"), base_url, **opts)
    elif spec.startswith("claude-") or spec.startswith("anthropic:"):
        from fastkernels.agent.llm.anthropic_backend import AnthropicBackend

        backend = AnthropicBackend(spec.removeprefix("anthropic:"), base_url, **opts)
    else:
        raise UsageError(f"unknown --llm-model {llm_model!r}: use claude-<model> (e.g. {DEFAULT_LLM_MODEL}), "
                         "openai:<model> [--llm-base-url URL], replay:<dir>, or library (offline)")
    if record_to:
        from fastkernels.agent.llm.replay import RecordingBackend

        backend = RecordingBackend(backend, record_to)
    return backend
