"""The typed events the engine emits: the only thing a front end (CLI, cockpit) consumes.

The engine calls an `EventSink` (any callable taking an Event); it never knows who listens. Sinks
are called from worker threads: a sink must be quick and thread-safe (the cockpit forwards each
event to the UI thread with `call_from_thread`; the CLI updates a progress display under a lock).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the reports travel whole; events.py stays importable without torch
    from fastkernels.measure.e2e import E2EReport
    from fastkernels.measure.unit import UnitReport


@dataclass
class Event:
    ts: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    model_id: str
    level: int
    backend: str
    tiny: bool
    weights: str = ""
    device: str = ""


@dataclass
class Discovered(Event):
    model_id: str
    level: int
    ops: list[str]


@dataclass
class GenerationStarted(Event):
    op: str
    attempt: int
    backend: str


@dataclass
class TextDelta(Event):
    op: str
    attempt: int
    text: str


@dataclass
class StreamReset(Event):
    """The reply so far is void (the connection dropped and the request restarts): clear it."""

    op: str
    attempt: int
    reason: str
    discarded_chars: int = 0


@dataclass
class GenerationFinished(Event):
    op: str
    attempt: int
    code: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    origin: str = "generated"  # "generated", "replay", "library" or "baseline" (what the backend gave back)


@dataclass
class ValidationFailed(Event):
    op: str
    attempt: int
    error: str
    stage: str = "validate"  # "extract", "static", "import", "init", "unit"


@dataclass
class RetryScheduled(Event):
    op: str
    attempt: int  # the attempt about to run
    reason: str


@dataclass
class OpChanged(Event):
    """An operator's state as the engine holds it now: a copy taken where it changed (status, code,
    verdict, steering), so a front end never reads the engine's live objects."""

    op: str
    status: str  # an OpStatus value: "pending", "generating", "correct", "approved", ...
    attempt: int = 0
    code: str | None = None
    previous_code: str | None = None
    last_error: str | None = None
    steering: str | None = None
    path: str | None = None
    best_speedup: float | None = None
    unit: UnitReport | None = None


@dataclass
class KernelSaved(Event):
    op: str
    path: str
    status: str  # "valid", "correct", "failed", "blamed", "approved", "rejected"


@dataclass
class UnitResult(Event):
    op: str
    attempt: int
    passed: bool
    report: UnitReport


@dataclass
class E2EProgress(Event):
    stage: str
    done: int
    total: int
    detail: str = ""


@dataclass
class E2EResult(Event):
    passed: bool
    report: E2EReport


@dataclass
class KernelBlamed(Event):
    op: str
    reason: str


@dataclass
class Message(Event):
    text: str
    level: str = "info"  # "info", "warning", "error"


@dataclass
class RunFinished(Event):
    summary: dict[str, Any]
    interrupted: bool = False


EventSink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """A sink that drops everything (library calls with no listener)."""


class Recorder:
    """A thread-safe sink that keeps every event (tests, replays, the cockpit's backlog)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[Event]) -> list:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


def fan_out(*sinks: EventSink) -> EventSink:
    def sink(event: Event) -> None:
        for s in sinks:
            s(event)

    return sink
