"""Claude through the Anthropic Messages API, streamed, with the official `anthropic` SDK.

The SDK's own retries are off (`max_retries=0`): a stream that breaks halfway must restart the
whole reply and tell the listener to clear what it showed, which only this loop can do. Retried:
429, 408/409, 5xx (529 overloaded included), connection failures, timeouts, an `error` event in
the stream, a stream that ends before `message_stop`. Not retried: 401/403 (AuthError), other 4xx.
"""

from __future__ import annotations

import os

from fastkernels.agent.llm.base import (
    DEFAULT_LLM_MODEL,
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

KEY_ENV = "ANTHROPIC_API_KEY"
KEY_HINT = f"set a valid {KEY_ENV}, or run offline with --llm-model library"
# A complete L1-L3 kernel file is 3-15k tokens; 32k leaves room for reasoning before the code.
DEFAULT_MAX_TOKENS = 32000


class AnthropicBackend:
    name = "anthropic"

    def __init__(
        self,
        model: str = DEFAULT_LLM_MODEL,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        extra_params: dict | None = None,
        **opts,
    ):
        self.policy = RetryPolicy.from_opts(opts)
        if opts:
            raise TypeError(f"unknown options for the anthropic backend: {', '.join(sorted(opts))}")
        if not model:
            raise UsageError(f"--llm-model anthropic:<model> needs a model name, e.g. {DEFAULT_LLM_MODEL}")
        key = api_key or os.environ.get(KEY_ENV)
        if not key:
            raise UsageError(f"--llm-model {model} needs {KEY_ENV} set; for offline use pass --llm-model library")
        try:
            import anthropic
        except ImportError:
            raise UsageError("--llm-model claude-* needs the anthropic package: pip install anthropic "
                             "(or run offline with --llm-model library)") from None
        self._sdk = anthropic
        self.model = model
        self.label = f"anthropic:{model}"
        self.max_tokens = max_tokens
        self.extra_params = dict(extra_params or {})
        self._client = anthropic.Anthropic(
            api_key=key,
            base_url=base_url,
            max_retries=0,
            timeout=anthropic.Timeout(timeout, connect=connect_timeout),
        )

    def generate(self, prompt, on_text: TextCallback, *, op, attempt: int,
                 on_retry: RetryCallback | None = None) -> Completion:
        return stream_with_retries(self.label, lambda state: self._one_try(prompt, state), on_text, on_retry,
                                   self.policy, self.model)

    def _one_try(self, prompt, state: StreamState) -> None:
        sdk = self._sdk
        system, user = split_prompt(prompt)
        params = dict(self.extra_params)
        if system:
            params["system"] = system
        try:
            stream = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                messages=[{"role": "user", "content": user}],
                stream=True,
                **params,
            )
            with stream:
                for event in stream:
                    self._take(event, state)
        except sdk.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else body
            error_type = error.get("type") if isinstance(error, dict) else None
            message = one_line((error.get("message") if isinstance(error, dict) else None) or exc.message)
            status = exc.status_code if exc.status_code != 200 else 0  # 200: an error event mid-stream
            raise status_failure(self.label, status, error_type, message, retry_after_of(exc.response),
                                 KEY_HINT) from exc
        except sdk.APIConnectionError as exc:  # includes APITimeoutError
            raise TransientError(f"connection failed: {one_line(exc)}") from exc
        except Exception as exc:
            if isinstance(exc, (TransientError, LLMError)) or not transport_failure(exc):
                raise
            raise TransientError(f"stream dropped after {len(state.text)} chars: {type(exc).__name__}: "
                                 f"{one_line(exc)}") from exc

    @staticmethod
    def _take(event, state: StreamState) -> None:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            message = event.message
            state.model = getattr(message, "model", "") or state.model
            usage = getattr(message, "usage", None)
            if usage is not None:
                state.input_tokens = getattr(usage, "input_tokens", 0) or 0
                state.output_tokens = getattr(usage, "output_tokens", 0) or 0
        elif kind == "content_block_delta":
            delta = event.delta
            if getattr(delta, "type", None) == "text_delta":
                state.emit(delta.text)
        elif kind == "message_delta":
            usage = getattr(event, "usage", None)
            if usage is not None:
                state.output_tokens = getattr(usage, "output_tokens", None) or state.output_tokens
                state.input_tokens = getattr(usage, "input_tokens", None) or state.input_tokens
            state.stop_reason = getattr(event.delta, "stop_reason", None) or state.stop_reason
        elif kind == "message_stop":
            state.finished = True
