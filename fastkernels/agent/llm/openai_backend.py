"""Any OpenAI-compatible chat server (OpenAI, vLLM, SGLang, Ollama, llama.cpp), streamed, with the
official `openai` SDK: `--llm-model openai:<model> [--llm-base-url URL]`.

Same fault handling as the Anthropic backend: the SDK's retries are off and this loop restarts
the reply on 429, 408/409, 5xx, connection failures, timeouts and streams that end before a
finish_reason; 401/403 fail at once. Usage comes from the last chunk (`stream_options:
include_usage`); a server that rejects stream_options gets the request again without it.
"""

from __future__ import annotations

import os

from fastkernels.agent.llm.base import (
    Completion,
    LLMError,
    RetryCallback,
    RetryPolicy,
    StreamState,
    TextCallback,
    TransientError,
    one_line,
    retry_after_of,
    split_prompt,
    status_failure,
    stream_with_retries,
    transport_failure,
)
from fastkernels.errors import UsageError

KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
KEY_HINT = f"set a valid {KEY_ENV} (or the key your server expects), or run offline with --llm-model library"
# Local servers (vLLM, Ollama, llama.cpp) take any key; the SDK insists on one.
LOCAL_PLACEHOLDER_KEY = "not-needed"


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        extra_params: dict | None = None,
        **opts,
    ):
        self.policy = RetryPolicy.from_opts(opts)
        if opts:
            raise TypeError(f"unknown options for the openai backend: {', '.join(sorted(opts))}")
        if not model:
            raise UsageError("--llm-model openai:<model> needs a model name, e.g. openai:gpt-5 or openai:Qwen/Qwen3-Coder-30B")
        base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        key = api_key or os.environ.get(KEY_ENV)
        if not key:
            if not base_url:
                raise UsageError(f"--llm-model openai:{model} needs {KEY_ENV} set, or --llm-base-url for a local "
                                 "OpenAI-compatible server; for offline use pass --llm-model library")
            key = LOCAL_PLACEHOLDER_KEY
        try:
            import openai
        except ImportError:
            raise UsageError("--llm-model openai:* needs the openai package: pip install openai "
                             "(or run offline with --llm-model library)") from None
        self._sdk = openai
        self.model = model
        self.base_url = base_url
        self.label = f"openai:{model}" + (f"@{base_url}" if base_url else "")
        self.params = dict(extra_params or {})
        if max_tokens is not None:
            self.params["max_tokens"] = max_tokens
        if temperature is not None:
            self.params["temperature"] = temperature
        self._include_usage = True
        self._client = openai.OpenAI(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            timeout=openai.Timeout(timeout, connect=connect_timeout),
        )

    def generate(self, prompt, on_text: TextCallback, *, op, attempt: int,
                 on_retry: RetryCallback | None = None) -> Completion:
        return stream_with_retries(self.label, lambda state: self._one_try(prompt, state), on_text, on_retry,
                                   self.policy, self.model)

    def _one_try(self, prompt, state: StreamState) -> None:
        sdk = self._sdk
        params = dict(self.params)
        system, user = split_prompt(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if self._include_usage:
            params["stream_options"] = {"include_usage": True}
        try:
            stream = self._client.chat.completions.create(
                model=self.model,
                messages=messages,
                stream=True,
                **params,
            )
            with stream:
                for chunk in stream:
                    self._take(chunk, state)
        except sdk.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else body
            error_type = (error.get("type") or error.get("code")) if isinstance(error, dict) else None
            message = one_line((error.get("message") if isinstance(error, dict) else None) or exc.message)
            if exc.status_code == 400 and self._include_usage and "stream_options" in message:
                self._include_usage = False
                raise TransientError(f"server rejects stream_options ({message}); asking again without it") from exc
            raise status_failure(self.label, exc.status_code, error_type if isinstance(error_type, str) else None,
                                 message, retry_after_of(exc.response), KEY_HINT) from exc
        except sdk.APIConnectionError as exc:  # includes APITimeoutError and connections cut mid-stream
            raise TransientError(f"connection failed after {len(state.text)} chars: {one_line(exc)}") from exc
        except sdk.APIError as exc:  # an error object inside the stream
            raise TransientError(f"error in the stream after {len(state.text)} chars: {one_line(exc.message)}") from exc
        except Exception as exc:
            if isinstance(exc, (TransientError, LLMError)) or not transport_failure(exc):
                raise
            raise TransientError(f"stream dropped after {len(state.text)} chars: {type(exc).__name__}: "
                                 f"{one_line(exc)}") from exc

    @staticmethod
    def _take(chunk, state: StreamState) -> None:
        state.model = getattr(chunk, "model", None) or state.model
        for choice in getattr(chunk, "choices", None) or []:
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None) if delta is not None else None
            if text:
                state.emit(text)
            if getattr(choice, "finish_reason", None):
                state.stop_reason = choice.finish_reason
                state.finished = True
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            state.input_tokens = getattr(usage, "prompt_tokens", 0) or 0
            state.output_tokens = getattr(usage, "completion_tokens", 0) or 0
