"""The one small interface every LLM backend implements, and the retry loop the network backends
share.

A backend streams one reply for one prompt:

    completion = backend.generate(prompt, on_text, op=spec, attempt=1, on_retry=None)

`on_text(chunk)` is called from the calling thread with each piece of text as it arrives.
A network backend that loses a reply halfway (a dropped connection, a 529 in the middle of the
stream) cannot resume it: it starts the reply again from the beginning. Before it does, it calls
`on_retry(RetryNotice)`; when `notice.discarded_chars > 0` the text streamed so far is void and the
listener must clear it. `Completion.text` is always the final reply alone.

To stop a generation, raise from `on_text` or `on_retry` (e.g. `GenerationCancelled`): the
exception propagates unchanged and the stream is closed.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

from fastkernels.errors import FastKernelsError

# The model `--llm-model` names when none is given (the CLI, the cockpit, AgentConfig).
DEFAULT_LLM_MODEL = "claude-opus-4-6"

if TYPE_CHECKING:
    from fastkernels.agent.prompts import Prompt
    from fastkernels.registry.tasks import OperatorSpec

TextCallback = Callable[[str], None]


class LLMError(FastKernelsError):
    """The backend could not produce a reply (gave up after retries, unknown model, bad request).
    The message is one line that says what happened and what to do. `fatal`: asking again for
    another attempt cannot help (a refused key, an unknown model, no recorded reply); the agent
    stops generating for this run instead of burning its attempts."""

    def __init__(self, message: str, *, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


class AuthError(LLMError):
    """The server refused the credentials. Never retried; always fatal."""

    def __init__(self, message: str):
        super().__init__(message, fatal=True)


class GenerationCancelled(Exception):
    """Raise from a callback to stop a generation; it propagates out of `generate` unchanged."""


@dataclass(frozen=True)
class Completion:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    model: str = ""
    # Where the text comes from: "generated" (an LLM wrote it), "replay" (a recorded LLM reply),
    # "library" (a verified kernel shipped with the tool), "baseline" (no kernel: the baseline back).
    origin: str = "generated"
    retries: int = 0  # how many times the reply was restarted (rate limits, dropped streams)
    stop_reason: str | None = None  # as the server said it ("end_turn", "max_tokens", "stop", ...)

    @property
    def truncated(self) -> bool:
        """The server stopped at the output-token limit: the code is probably cut off."""
        return self.stop_reason in ("max_tokens", "length")


@dataclass(frozen=True)
class RetryNotice:
    reason: str  # one line: "429 rate limited", "stream dropped after 812 chars", ...
    delay: float  # seconds until the next try starts
    try_number: int  # the try about to start (2 is the first retry)
    max_tries: int
    discarded_chars: int  # text already sent to on_text that the restart makes void


RetryCallback = Callable[[RetryNotice], None]


@runtime_checkable
class LLMBackend(Protocol):
    name: str  # "anthropic", "openai", "replay", "library"
    label: str  # what the UI, MLflow and results show, e.g. "anthropic:claude-opus-4-6"

    def generate(
        self,
        prompt: "Prompt",
        on_text: TextCallback,
        *,
        op: "OperatorSpec",
        attempt: int,
        on_retry: RetryCallback | None = None,
    ) -> Completion: ...


# ---- the retry loop of the network backends ------------------------------------------------------


class TransientError(Exception):
    """One try failed in a way that another try may fix (429, 529, 5xx, timeout, dropped stream)."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter: try n waits min(max_delay, base_delay * 2**(n-1)) times a
    factor in [0.5, 1]; a server's retry-after wins when it says more (capped at max_retry_after)."""

    max_retries: int = 5
    base_delay: float = 2.0
    max_delay: float = 60.0
    max_retry_after: float = 120.0

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1)) * random.uniform(0.5, 1.0)
        if retry_after is not None and retry_after > 0:
            return min(self.max_retry_after, max(backoff, retry_after))
        return backoff

    @classmethod
    def from_opts(cls, opts: dict) -> "RetryPolicy":
        """Take network_retries/backoff_base/backoff_max/max_retry_after out of a backend's options
        (named apart from the agent's --max-retries, which counts attempts at a correct kernel)."""
        names = {"network_retries": "max_retries", "backoff_base": "base_delay", "backoff_max": "max_delay",
                 "max_retry_after": "max_retry_after"}
        return cls(**{field_: opts.pop(opt) for opt, field_ in names.items() if opt in opts})


class _CallbackFailed(Exception):
    def __init__(self, inner: BaseException):
        self.inner = inner


@dataclass
class StreamState:
    """What one try has streamed so far; a backend's try function fills it."""

    on_text: TextCallback
    chunks: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    model: str = ""
    finished: bool = False  # the server said the reply is complete

    def emit(self, text: str) -> None:
        if not text:
            return
        self.chunks.append(text)
        try:
            self.on_text(text)
        except BaseException as exc:  # the listener's exception is not a network fault
            raise _CallbackFailed(exc) from exc

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def stream_with_retries(
    backend: str,
    one_try: Callable[[StreamState], None],
    on_text: TextCallback,
    on_retry: RetryCallback | None,
    policy: RetryPolicy,
    default_model: str,
) -> Completion:
    """Run `one_try` until it completes a reply. It raises TransientError for what a retry may fix
    and LLMError/AuthError for what it cannot; a try that returns without `state.finished` is a
    reply cut short (the connection ended before the server's end-of-message)."""
    start = time.monotonic()
    max_tries = policy.max_retries + 1
    last_reason = ""
    for try_number in range(1, max_tries + 1):
        state = StreamState(on_text=on_text)
        retry_after = None
        try:
            one_try(state)
            if state.finished:
                return Completion(
                    text=state.text,
                    input_tokens=state.input_tokens,
                    output_tokens=state.output_tokens,
                    seconds=time.monotonic() - start,
                    model=state.model or default_model,
                    origin="generated",
                    retries=try_number - 1,
                    stop_reason=state.stop_reason,
                )
            last_reason = f"stream ended before the reply was complete ({len(state.text)} chars received)"
        except _CallbackFailed as exc:
            raise exc.inner from None
        except TransientError as exc:
            last_reason, retry_after = exc.reason, exc.retry_after
        if try_number == max_tries:
            break
        delay = policy.delay(try_number, retry_after)
        if on_retry is not None:
            on_retry(RetryNotice(last_reason, delay, try_number + 1, max_tries, len(state.text)))
        time.sleep(delay)
    raise LLMError(f"{backend}: gave up after {max_tries} tries, last: {last_reason}; try again later")


def split_prompt(prompt) -> tuple[str, str]:
    """(system, user) of a Prompt, or ("", text) of a plain string."""
    if prompt is None:
        return "", ""
    if isinstance(prompt, str):
        return "", prompt
    return getattr(prompt, "system", "") or "", getattr(prompt, "user", "") or ""


def one_line(text: object, limit: int = 300) -> str:
    """A server's error message squeezed onto one line."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def transport_failure(exc: BaseException) -> bool:
    """A network-level failure raised by the HTTP stack under an SDK (connection reset, incomplete
    chunked read, read timeout), whichever httpx generation the installed SDK uses."""
    root = type(exc).__module__.split(".")[0]
    return root in ("httpx", "httpx2", "httpcore", "h11", "anyio") or isinstance(exc, (ConnectionError, TimeoutError))


def retry_after_of(response) -> float | None:
    """Seconds a server asked us to wait (retry-after-ms or retry-after in seconds), if any."""
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) * scale
        except ValueError:
            continue
    return None


def status_failure(backend: str, status: int, error_type: str | None, message: str,
                   retry_after: float | None, key_hint: str) -> Exception:
    """The exception an HTTP error status (or an error event inside a stream) turns into: a
    TransientError for what a retry may fix, AuthError/LLMError (one line) for what it cannot."""
    # status 0: an error event inside a 200 stream, named by its type alone
    what = " ".join(x for x in (str(status) if status else "", error_type or "") if x) or "error"
    if status == 401 or error_type == "authentication_error":
        return AuthError(f"{backend}: the API key was refused ({what}: {message}); {key_hint}")
    if status == 403 or error_type == "permission_error":
        return AuthError(f"{backend}: permission denied ({what}: {message}); {key_hint}")
    transient_types = ("overloaded_error", "api_error", "rate_limit_error", "timeout_error", "server_error")
    if status in (408, 409, 429) or status >= 500 or error_type in transient_types:
        return TransientError(f"{what}: {message}", retry_after)
    if status == 404 or error_type == "not_found_error":
        return LLMError(f"{backend}: not found ({what}: {message}); check --llm-model and --llm-base-url", fatal=True)
    return LLMError(f"{backend}: request refused ({what}: {message})", fatal=True)
