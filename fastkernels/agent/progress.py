"""The CLI's view of an agent run: a live table per operator (stage, attempt, tokens streamed)
fed by engine events, then a summary table and the end-to-end line."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fastkernels import events as ev


class LiveProgress:
    """An EventSink that renders a live per-operator table. Thread-safe; cheap per event."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self._lock = threading.Lock()
        self.rows: dict[str, dict] = {}
        self.e2e = ""
        self.messages: list[str] = []
        self._live: Live | None = None

    def __enter__(self):
        # A live table needs a terminal; piped into a log, one line per step instead.
        if self.console.is_terminal:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              get_renderable=self._render, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live:
            self._live.__exit__(*exc)

    def _row(self, op: str) -> dict:
        return self.rows.setdefault(op, {"stage": "pending", "attempt": 0, "chars": 0, "t0": time.time(), "note": ""})

    def __call__(self, event: ev.Event) -> None:
        if self._live is None and not isinstance(event, ev.TextDelta):
            line = _plain_line(event)
            if line:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        with self._lock:
            if isinstance(event, ev.Discovered):
                for op in event.ops:
                    self._row(op)
            elif isinstance(event, ev.GenerationStarted):
                r = self._row(event.op)
                r.update(stage="generating", attempt=event.attempt, chars=0, t0=time.time(), note="")
            elif isinstance(event, ev.TextDelta):
                self._row(event.op)["chars"] += len(event.text)
            elif isinstance(event, ev.GenerationFinished):
                r = self._row(event.op)
                r["stage"] = "validating" if event.code else "no code"
                if event.error:
                    r["note"] = event.error.splitlines()[0][:80]
            elif isinstance(event, ev.ValidationFailed):
                r = self._row(event.op)
                r.update(stage=f"failed {event.stage}", note=event.error.splitlines()[0][:80] if event.error else "")
            elif isinstance(event, ev.UnitResult):
                r = self._row(event.op)
                r["stage"] = "correct" if event.passed else "wrong"
            elif isinstance(event, ev.KernelSaved):
                self._row(event.op)["stage"] = event.status
            elif isinstance(event, ev.KernelBlamed):
                self._row(event.op).update(stage="blamed", note=event.reason[:80])
            elif isinstance(event, ev.E2EProgress):
                self.e2e = f"end to end: {event.stage} {event.done}/{event.total} {event.detail}"
            elif isinstance(event, ev.Message):
                self.messages.append(event.text)

    def _render(self) -> Table:
        with self._lock:
            table = Table(title=self.title, caption=self.e2e or None)
            for col in ("operator", "stage", "attempt", "streamed", "note"):
                table.add_column(col)
            for op, r in self.rows.items():
                table.add_row(op, r["stage"], str(r["attempt"] or ""), f"{r['chars'] // 4} tok" if r["chars"] else "",
                              r["note"])
            return table


def _plain_line(event: ev.Event) -> str | None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
    op = getattr(event, "op", "")
    if isinstance(event, ev.GenerationStarted):
        return f"{stamp} {op}: generating, attempt {event.attempt} ({event.backend})"
    if isinstance(event, ev.GenerationFinished):
        what = f"{event.output_tokens} tokens in {event.seconds:.1f} s" if event.code else f"no code: {event.error}"
        return f"{stamp} {op}: generated, {what}"
    if isinstance(event, ev.ValidationFailed):
        return f"{stamp} {op}: failed {event.stage}: {event.error.splitlines()[0] if event.error else ''}"
    if isinstance(event, ev.UnitResult):
        return f"{stamp} {op}: unit benchmark {'passed' if event.passed else 'FAILED'}"
    if isinstance(event, ev.KernelSaved):
        return f"{stamp} {op}: saved {event.path} ({event.status})"
    if isinstance(event, ev.KernelBlamed):
        return f"{stamp} {op}: blamed end to end: {event.reason}"
    if isinstance(event, ev.E2EProgress):
        return f"{stamp} end to end: {event.stage} {event.done}/{event.total} {event.detail}".rstrip()
    if isinstance(event, ev.E2EResult):
        return f"{stamp} end to end: {'PASS' if event.passed else 'FAIL'}"
    if isinstance(event, ev.Message):
        return f"{stamp} {event.level}: {event.text}"
    return None


def _span(pair) -> str:
    """A speedup over the operator's shapes: one figure, or lowest-highest."""
    if not pair:
        return "-"
    lo, hi = pair
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x"


def summary_table(summary: dict) -> Table:
    t = Table(title=f"{summary['model']} · level {summary['level']} · backend {summary['backend']}")
    for col in ("operator", "status", "from", "attempts", "correct", "vs eager", "vs torch.compile",
                "% of roofline", "file"):
        t.add_column(col)
    notes = {r.get("timing_note") for r in summary["ops"] if r.get("timing_note")}
    if notes:
        t.caption = "; ".join(sorted(notes))
    for r in summary["ops"]:
        t.add_row(
            r["op"], r["status"], r.get("origin") or "-", str(r["attempts"]), "yes" if r["correct"] else "no",
            _span(r.get("vs_eager")), _span(r.get("vs_compile")),
            f"{100 * r['roofline']:.0f}%" if r.get("roofline") else "-",
            r["path"] or "-",
        )
    return t


def e2e_line(report) -> str:
    """One line: the end-to-end verdict (an E2EReport) with the figures it rests on (beside the
    noise floor)."""
    if report is None:
        return "end to end: not run"
    head = f"end to end: {'PASS' if report.passed else 'FAIL'}"
    return f"{head} · {report.verdict}" if report.verdict else f"{head} · token match {report.token_match}"
