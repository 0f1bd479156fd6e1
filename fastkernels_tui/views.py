"""The cockpit's view of each operator (a view model), kept on the UI thread and fed by engine events.

Everything here comes from events: the engine's `OpChanged` gives status, code and verdict (a copy
taken where they changed: the cockpit never reads the engine's live objects); this view adds what
only the cockpit needs: the text streamed so far (every attempt, with validation errors inline), token
counts and rates, and the last unit report in a table-friendly form."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastkernels import events as ev
from fastkernels.measure.unit import UnitReport

# Status names as the agent's OpStatus values; the cockpit adds "validating" (between the end of
# a generation and its verdict) for a live badge.
BADGES = {
    "pending": ("·", "pending"),
    "generating": ("◐", "generating"),
    "validating": ("◑", "validating"),
    "invalid": ("✗", "invalid"),
    "valid": ("○", "valid"),
    "correct": ("✓", "correct"),
    "failed": ("✗", "failed"),
    "pending review": ("?", "review"),
    "approved": ("★", "approved"),
    "rejected": ("⊘", "rejected"),
    "blamed": ("!", "blamed"),
}


@dataclass
class OpView:
    name: str
    class_name: str = ""
    status: str = "pending"
    attempt: int = 0
    backend: str = ""
    text: list[str] = field(default_factory=list)  # what the stream pane shows, in pieces
    chars: int = 0  # characters streamed in the current attempt
    tokens: int = 0  # the backend's output tokens once a generation finished, else ~chars/4
    started: float | None = None
    finished: float | None = None
    gen_seconds: float | None = None  # the engine's own timing of the finished generation
    best_speedup: float | None = None
    code: str | None = None
    previous_code: str | None = None
    baseline_code: str = ""
    unit: UnitReport | None = None
    path: str | None = None
    steering: str | None = None
    last_error: str | None = None

    # -- stream -------------------------------------------------------------------------------
    def add(self, piece: str) -> None:
        self.text.append(piece)

    def drop_tail(self, chars: int) -> None:
        """Forget the last `chars` characters of the stream (a reply that restarted)."""
        while chars > 0 and self.text:
            last = self.text.pop()
            if len(last) > chars:
                self.text.append(last[: len(last) - chars])
                break
            chars -= len(last)

    def stream_text(self) -> str:
        return "".join(self.text)

    def rate(self, now: float | None = None) -> float | None:
        """Tokens per second of the current (or last) attempt; None when not measurable (a
        library reply arrives in one go: its rate says nothing)."""
        if self.gen_seconds is not None:
            return self.tokens / self.gen_seconds if self.gen_seconds >= 0.05 else None
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else (now or time.monotonic())
        dt = end - self.started
        return self.tokens / dt if dt >= 0.05 else None

    @property
    def badge(self) -> tuple[str, str]:
        return BADGES.get(self.status, ("·", self.status))


def apply_event(view: OpView, event: ev.Event, now: float) -> str | None:
    """Update `view` from one event about its operator; return a line to show in its stream."""
    if isinstance(event, ev.GenerationStarted):
        view.status, view.attempt, view.backend = "generating", event.attempt, event.backend
        view.chars = view.tokens = 0
        view.started, view.finished, view.gen_seconds = now, None, None
        sep = "\n" if view.text and not view.text[-1].endswith("\n") else ""
        return f"{sep}── attempt {event.attempt} · {event.backend} ──\n"
    if isinstance(event, ev.GenerationFinished):
        view.finished, view.gen_seconds = now, event.seconds
        if event.output_tokens:
            view.tokens = event.output_tokens
        if event.error:
            view.status, view.last_error = "failed", event.error
            return f"\n✗ generation failed: {event.error}\n"
        view.status = "validating"
        secs = f" in {event.seconds:.1f}s" if event.seconds else ""
        return f"\n── generated {view.tokens} tokens{secs}; validating ──\n"
    if isinstance(event, ev.ValidationFailed):
        view.status, view.last_error = "invalid", event.error
        return f"✗ {event.stage} failed (attempt {event.attempt}): {event.error}\n"
    if isinstance(event, ev.StreamReset):
        view.drop_tail(event.discarded_chars)
        view.chars = view.tokens = 0
        return f"\n↺ reply restarted ({event.reason}); streaming it again\n"
    if isinstance(event, ev.RetryScheduled):
        return f"↻ retry: attempt {event.attempt} ({event.reason})\n"
    if isinstance(event, ev.UnitResult):
        view.unit = event.report
        view.status = "correct" if event.passed else "failed"
        speed = event.report.best_speedup
        if speed is not None and event.passed:
            view.best_speedup = max(view.best_speedup or 0.0, speed)
        if event.passed:
            return f"✓ unit tests passed (attempt {event.attempt})" + (f", best speedup {speed:.2f}×\n" if speed else "\n")
        err = event.report.failure_message().splitlines()[0] if event.report.failure_message() else "see the unit tab"
        return f"✗ unit tests failed (attempt {event.attempt}): {err}\n"
    if isinstance(event, ev.OpChanged):
        view.status = event.status
        for attr in ("attempt", "code", "previous_code", "last_error", "steering", "path", "best_speedup", "unit"):
            setattr(view, attr, getattr(event, attr))
        return None
    if isinstance(event, ev.KernelSaved):
        view.status, view.path = event.status, event.path
        return f"· saved {event.path} ({event.status})\n"
    if isinstance(event, ev.KernelBlamed):
        view.status, view.last_error = "blamed", event.reason
        return f"! blamed by the end-to-end check: {event.reason}\n"
    return None


# ---- unit reports -----------------------------------------------------------------------------

@dataclass
class UnitRow:
    """One shape of a UnitReport as the unit table shows it (times in ms, roofline in percent)."""

    shape: str
    dtype: str = ""
    passed: bool | None = None
    baseline: float | None = None
    compile: float | None = None
    candidate: float | None = None
    speedup: float | None = None
    speedup_compile: float | None = None
    roofline: float | None = None  # percent
    speedup_wall_compile: float | None = None  # per call with launch cost, over the compiled baseline


def unit_rows(report: UnitReport | None) -> list[UnitRow]:
    """Per-shape rows of a unit report (fastkernels.measure.unit.UnitReport)."""
    if report is None:
        return []
    return [UnitRow(shape=s.shape, dtype=s.dtype, passed=s.passed, baseline=s.baseline_eager_ms,
                    compile=s.baseline_compile_ms, candidate=s.candidate_ms, speedup=s.speedup_vs_eager,
                    speedup_compile=s.speedup_vs_compile,
                    roofline=100.0 * s.roofline_fraction if s.roofline_fraction is not None else None,
                    speedup_wall_compile=s.speedup_wall_vs_compile)
            for s in report.shapes]
