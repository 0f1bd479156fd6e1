"""Benchmark panels: the unit results of the selected operator per shape (table and bar chart of
speedups), and the end-to-end panel (progress, then the report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, ProgressBar, Static

from fastkernels_tui.views import OpView, unit_rows

if TYPE_CHECKING:
    from fastkernels.measure.e2e import E2EReport

BAR = "█"


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


def speedup_bars(rows, width: int = 30) -> Table:
    """One bar per shape: candidate speedup vs eager baseline, a tick at 1.0×."""
    table = Table(box=None, show_header=False, padding=(0, 1), expand=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    top = max([r.speedup for r in rows if r.speedup] + [1.0])
    for r in rows:
        s = r.speedup or 0.0
        n = int(round(width * s / top))
        one = int(round(width * 1.0 / top))
        bar = Text(BAR * n, style="green" if s >= 1.0 else "red")
        if n < one:
            bar.append(" " * (one - n - 1) + "│", style="dim")
        table.add_row(f"{r.shape} {_short(r.dtype)}".strip(), bar, f"{s:.2f}×" if r.speedup else "—")
    return table


class UnitPanel(Vertical):
    # compact headers: the centre pane is ~75 columns at 150 wide; every column must fit
    # ×eager, ×comp: device time; wall×c: per call with launch cost, over the compiled baseline
    COLUMNS = ("shape", "ok", "eager", "compile", "kernel", "×eager", "×comp", "%roof", "wall×c")

    def compose(self) -> ComposeResult:
        yield Static("no unit results yet", id="unit-header")
        yield DataTable(id="unit-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="unit-bars")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)

    def show(self, view: OpView | None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        rows = unit_rows(view.unit if view else None)
        header = self.query_one("#unit-header", Static)
        bars = self.query_one("#unit-bars", Static)
        if view is None or not rows:
            header.update(f"{view.name}: no unit results yet" if view else "no operator selected")
            bars.update("")
            return
        note = view.unit.error or view.unit.timing_note
        header.update(Text.assemble((view.name, "bold"), f" · unit results (ms per call) · attempt {view.attempt}" + (f" · {note}" if note else "")))
        for r in rows:
            ok = "✓" if r.passed else ("✗" if r.passed is False else "?")
            table.add_row(f"{r.shape} {_short(r.dtype)}".strip(), ok, _fmt(r.baseline, ".4f"), _fmt(r.compile, ".4f"),
                          _fmt(r.candidate, ".4f"), _fmt(r.speedup, ".2f"), _fmt(r.speedup_compile, ".2f"),
                          _fmt(r.roofline, ".0f"), _fmt(r.speedup_wall_compile, ".2f"))
        bars.update(speedup_bars(rows))


E2E_KEYS = (  # the report's headline figures first, in this order (E2EReport.to_dict() names)
    ("verdict", "verdict"),
    ("token_match", "greedy token match"), ("token_match_noise", "  noise floor (baseline bf16 vs fp32)"),
    ("top1_agreement", "teacher-forced top-1 agreement"), ("top1_agreement_noise", "  noise floor"),
    ("logit_rel_error", "logit relative error"), ("logit_rel_error_noise", "  noise floor"),
    ("shadow.passed", "shadow check (each op vs its baseline in place)"),
    ("timings.baseline_eager.decode_tok_s", "decode tokens/s, baseline"),
    ("timings.patched.decode_tok_s", "decode tokens/s, kernels"),
    ("speedup_decode", "decode speedup"), ("speedup_prefill", "prefill speedup"),
    ("candidates", "kernels"), ("blamed", "blamed"),
)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((key, v))
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str)) for x in v):
            out.append((key, ", ".join(map(str, v))))
    return out


class E2EPanel(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("end-to-end: not run yet (b runs it on the approved kernels)", id="e2e-header")
        yield ProgressBar(total=1, id="e2e-progress", show_eta=False)  # a total: no idle animation
        with VerticalScroll():
            yield DataTable(id="e2e-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("metric", "value")

    def progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        self.query_one("#e2e-header", Static).update(f"end-to-end: {stage} {done}/{total} {detail}".rstrip())
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)

    def show_report(self, passed: bool, report: E2EReport) -> None:
        notes = "; ".join(report.notes)
        self.query_one("#e2e-header", Static).update(Text.assemble(
            "end-to-end: ", ("passed" if passed else "FAILED", "bold green" if passed else "bold red"),
            f" · {notes}" if notes else ""))
        table = self.query_one(DataTable)
        table.clear()
        flat = dict(_flatten(report.to_dict()))
        shown = set()
        for key, label in E2E_KEYS:
            if key in flat:
                table.add_row(label, _value(flat[key]))
                shown.add(key)
        for key, val in flat.items():  # the rest of the report, where it says something
            if key not in shown and val not in (None, "", False):
                table.add_row(key, _value(val))


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
