"""What the cockpit knows about each operator, kept on the UI thread and fed by engine events.

The engine's `Agent.states` is the source of truth for code and status; this view adds what only
the cockpit needs: the text streamed so far (every attempt, with validation errors inline), token
counts and rates, and the last unit report in a table-friendly form."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastkernels import events as ev

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


def status_name(status: Any) -> str:
    """'generating' from an OpStatus enum member or a plain string."""
    value = getattr(status, "value", status)
    return str(value) if value is not None else "pending"


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
    unit: dict | None = None
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
        view.unit = event.result
        view.status = "correct" if event.passed else "failed"
        speed = best_speedup(event.result)
        if speed is not None:
            view.best_speedup = max(view.best_speedup or 0.0, speed) if event.passed else view.best_speedup
        if event.passed:
            return f"✓ unit tests passed (attempt {event.attempt})" + (f", best speedup {speed:.2f}×\n" if speed else "\n")
        err = event.result.get("error") or event.result.get("reason") or "see the unit tab"
        return f"✗ unit tests failed (attempt {event.attempt}): {err}\n"
    if isinstance(event, ev.KernelSaved):
        view.status, view.path = event.status, event.path
        return f"· saved {event.path} ({event.status})\n"
    if isinstance(event, ev.KernelBlamed):
        view.status, view.last_error = "blamed", event.reason
        return f"! blamed by the end-to-end check: {event.reason}\n"
    return None


def sync_from_state(view: OpView, state: Any) -> None:
    """Copy the agent's authoritative OpState fields (any object with those attributes)."""
    if state is None:
        return
    status = getattr(state, "status", None)
    if status is not None:
        view.status = status_name(status)
    for attr in ("code", "previous_code"):  # the engine's, verbatim (None: there is none)
        if hasattr(state, attr):
            setattr(view, attr, getattr(state, attr))
    for attr in ("attempt", "best_speedup", "steering", "last_error"):
        val = getattr(state, attr, None)
        if val is not None:
            setattr(view, attr, val)
    if getattr(state, "unit", None):
        view.unit = state.unit
    if getattr(state, "path", None):
        view.path = str(state.path)
    spec = getattr(state, "spec", None)
    if spec is not None:
        view.class_name = view.class_name or getattr(spec, "class_name", "")
        view.baseline_code = view.baseline_code or getattr(spec, "source_code", "")


# ---- unit reports -----------------------------------------------------------------------------

_ALIASES = {
    "baseline": ("baseline_ms", "eager_ms", "baseline_eager_ms", "baseline"),
    "compile": ("compile_ms", "baseline_compile_ms", "compiled_ms", "compile"),
    "candidate": ("candidate_ms", "kernel_ms", "candidate"),
    "speedup": ("speedup", "speedup_eager", "speedup_vs_eager"),
    "speedup_compile": ("speedup_compile", "speedup_vs_compile"),
    "roofline": ("roofline_pct", "roofline", "roofline_fraction", "pct_of_roofline", "fraction_of_peak"),
    "passed": ("passed", "ok", "correct"),
    "dtype": ("dtype",),
}


@dataclass
class UnitRow:
    shape: str
    dtype: str = ""
    passed: bool | None = None
    baseline: float | None = None
    compile: float | None = None
    candidate: float | None = None
    speedup: float | None = None
    speedup_compile: float | None = None
    roofline: float | None = None  # percent


def _pick(d: dict, key: str):
    for alias in _ALIASES[key]:
        if alias in d and d[alias] is not None:
            return d[alias]
    return None


def _num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def unit_rows(report: dict | None) -> list[UnitRow]:
    """Per-shape rows from a unit report dict (UnitReport.to_dict()): `shapes` or `results` as a
    list of dicts or a name -> dict mapping; times in ms; roofline as a fraction or a percent."""
    if not report:
        return []
    items = report.get("shapes", report.get("results", []))
    if isinstance(items, dict):
        items = [{"shape": k, **v} for k, v in items.items() if isinstance(v, dict)]
    rows = []
    for r in items or []:
        if not isinstance(r, dict):
            continue
        timing = r.get("timing") if isinstance(r.get("timing"), dict) else {}
        merged = {**timing, **r}
        roof = _num(_pick(merged, "roofline"))
        if roof is not None and roof <= 1.5:  # a fraction of the ceiling
            roof *= 100.0
        base, cand = _num(_pick(merged, "baseline")), _num(_pick(merged, "candidate"))
        comp = _num(_pick(merged, "compile"))
        speed = _num(_pick(merged, "speedup"))
        if speed is None and base and cand:
            speed = base / cand
        speed_c = _num(_pick(merged, "speedup_compile"))
        if speed_c is None and comp and cand:
            speed_c = comp / cand
        passed = _pick(merged, "passed")
        rows.append(UnitRow(
            shape=str(merged.get("shape") or merged.get("name") or "?"),
            dtype=str(_pick(merged, "dtype") or ""),
            passed=bool(passed) if passed is not None else None,
            baseline=base, compile=comp, candidate=cand, speedup=speed, speedup_compile=speed_c, roofline=roof,
        ))
    return rows


def best_speedup(report: dict | None) -> float | None:
    if not report:
        return None
    top = _num(report.get("best_speedup"))
    if top is not None:
        return top
    speeds = [r.speedup for r in unit_rows(report) if r.speedup is not None and r.passed is not False]
    return max(speeds) if speeds else None
