"""Benchmark panels: the unit results of the selected operator per shape (table and a plot of its
speedups), and the end-to-end panel (progress, then the report with a plot of decode tokens/s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, ProgressBar, Static
from textual_plotext import PlotextPlot

from fastkernels_tui.views import OpView, unit_rows

if TYPE_CHECKING:
    from fastkernels.measure.e2e import E2EReport

def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)


def plot_speedups(plot: PlotextPlot, rows) -> None:
    """Grouped bars per shape: device time over the eager and over the compiled baseline, and wall
    time per call (launch included) over the compiled baseline; the line at 1× is break-even."""
    plt = plot.plt
    plt.clear_data()
    plt.clear_figure()
    named = [(f"{r.shape} {_short(r.dtype)}".strip(), r) for r in rows]
    plot.display = any(r.speedup or r.speedup_compile or r.speedup_wall_compile for _, r in named)
    if not plot.display:  # not timed (a CPU): no bars to draw
        return
    series = [[r.speedup or 0.0 for _, r in named], [r.speedup_compile or 0.0 for _, r in named],
              [r.speedup_wall_compile or 0.0 for _, r in named]]
    plt.multiple_bar([n for n, _ in named], series, labels=["×eager", "×compiled", "wall ×compiled"])
    plt.hline(1.0, "white")
    plt.title("speedup per shape (1× = break-even)")
    plot.refresh()


def plot_decode(plot: PlotextPlot, report: E2EReport) -> None:
    """Decode tokens/s of every end-to-end variant the report timed, as bars."""
    plt = plot.plt
    plt.clear_data()
    plt.clear_figure()
    variants = [(name.replace("_", " "), t["decode_tok_s"]) for name, t in report.timings.items()
                if isinstance(t, dict) and t.get("decode_tok_s")]
    if variants:
        plt.bar([n for n, _ in variants], [v for _, v in variants], orientation="horizontal", width=0.4)
        plt.title("decode tokens/s" + (" (CPU: not meaningful)" if report.device == "cpu" else ""))
    plot.refresh()


class UnitPanel(Vertical):
    # compact headers: the centre pane is ~75 columns at 150 wide; every column must fit
    # ×eager, ×comp: device time; wall×c: per call with launch cost, over the compiled baseline
    COLUMNS = ("shape", "ok", "eager", "compile", "kernel", "×eager", "×comp", "%roof", "wall×c")

    def compose(self) -> ComposeResult:
        yield Static("no unit results yet", id="unit-header")
        yield DataTable(id="unit-table", cursor_type="row", zebra_stripes=True)
        yield PlotextPlot(id="unit-plot")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)

    def show(self, view: OpView | None) -> None:
        table = self.query_one(DataTable)
        table.clear()
        rows = unit_rows(view.unit if view else None)
        header = self.query_one("#unit-header", Static)
        plot = self.query_one("#unit-plot", PlotextPlot)
        if view is None or not rows:
            header.update(f"{view.name}: no unit results yet" if view else "no operator selected")
            plot_speedups(plot, [])
            return
        note = view.unit.error or view.unit.timing_note
        header.update(Text.assemble((view.name, "bold"), f" · unit results (ms per call) · attempt {view.attempt}" + (f" · {note}" if note else "")))
        for r in rows:
            ok = "✓" if r.passed else ("✗" if r.passed is False else "?")
            table.add_row(f"{r.shape} {_short(r.dtype)}".strip(), ok, _fmt(r.baseline, ".4f"), _fmt(r.compile, ".4f"),
                          _fmt(r.candidate, ".4f"), _fmt(r.speedup, ".2f"), _fmt(r.speedup_compile, ".2f"),
                          _fmt(r.roofline, ".0f"), _fmt(r.speedup_wall_compile, ".2f"))
        plot_speedups(plot, rows)


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
        yield PlotextPlot(id="e2e-plot")
        with VerticalScroll():
            yield DataTable(id="e2e-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("metric", "value")
        self.query_one("#e2e-plot").display = False  # until a report has timings

    def progress(self, stage: str, done: int, total: int, detail: str = "") -> None:
        self.query_one("#e2e-header", Static).update(f"end-to-end: {stage} {done}/{total} {detail}".rstrip())
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)

    def show_report(self, passed: bool, report: E2EReport) -> None:
        notes = "; ".join(report.notes)
        self.query_one("#e2e-header", Static).update(Text.assemble(
            "end-to-end: ", ("passed" if passed else "FAILED", "bold green" if passed else "bold red"),
            f" · {notes}" if notes else ""))
        plot = self.query_one("#e2e-plot", PlotextPlot)
        plot.display = bool(report.timings)
        plot_decode(plot, report)
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
