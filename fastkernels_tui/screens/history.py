"""Past runs, from the engine's tracking history (fastkernels.track.history). Loaded in a worker;
where tracking is absent or empty the screen says so."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

COLUMNS = ("when", "model", "level", "backend", "passing", "best speedup", "e2e match", "e2e speedup", "run")


def _as_dict(row: Any) -> dict:
    if isinstance(row, dict):
        return row
    if hasattr(row, "to_dict"):
        return row.to_dict()
    return dict(vars(row))


def load_runs(model: str | None, level: int | None, limit: int = 50) -> list[dict]:
    """Rows of past runs, newest first. Raises ImportError while tracking is not installed."""
    from fastkernels.track import history

    return [_as_dict(r) for r in history.list_runs(model=model, level=level, limit=limit)]


def speedup_trend(rows: list[dict], most: int = 12) -> dict[str, list[tuple[int, float]]]:
    """Each operator's unit speedup in the newest `most` of `rows` (newest first, as `load_runs`
    gives them), as (run number, speedup) points, oldest run first (number 1)."""
    from fastkernels.track import history

    runs = list(reversed(rows[:most]))
    trend: dict[str, list[tuple[int, float]]] = {}
    for i, row in enumerate(runs, start=1):
        for kernel in history.get_run(row["run_id"]).kernels:
            if kernel.speedup is not None and kernel.passing:
                trend.setdefault(kernel.op, []).append((i, kernel.speedup))
    return trend


def _cell(row: dict, *keys: str) -> str:
    for k in keys:
        v = row.get(k)
        if v is not None:
            return f"{v:.3g}" if isinstance(v, float) else str(v)
    return "—"


class HistoryScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,h", "close", "Close", id="history_close")]

    def __init__(self, model: str | None = None, level: int | None = None) -> None:
        super().__init__()
        self.model, self.level = model, level

    def compose(self) -> ComposeResult:
        with Vertical(id="history"):
            yield Static(f"past runs · {self.model or 'all models'} · loading…", id="history-header")
            yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            yield PlotextPlot(id="history-trend")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self.query_one("#history-trend").display = False  # until there is a trend to draw
        self.load()

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def load(self) -> None:
        try:
            rows = load_runs(self.model, self.level)
        except ImportError as exc:
            self.app.call_from_thread(self._show_note, f"history is not available yet (tracking: {exc})")
            return
        except Exception as exc:  # a broken or unreadable store: say so, keep the app
            self.app.call_from_thread(self._show_note, f"could not read the run history: {type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self._show, rows)
        try:
            trend = speedup_trend(rows)
        except Exception:  # noqa: BLE001 - the table is shown; a run that cannot be read only loses its points
            return
        self.app.call_from_thread(self._show_trend, trend)

    def _show_trend(self, trend: dict[str, list[tuple[int, float]]]) -> None:
        plot = self.query_one("#history-trend", PlotextPlot)
        plot.display = any(len(points) > 1 for points in trend.values())
        if not plot.display:  # one run: no trend yet
            return
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        for op, points in sorted(trend.items()):
            plt.plot([x for x, _ in points], [y for _, y in points], label=op, marker="dot")
        plt.title("unit speedup per operator, run by run (oldest left)")
        plt.xlabel("run")
        plot.refresh()

    def _show_note(self, text: str) -> None:
        self.query_one("#history-header", Static).update(text + "  · escape closes")

    def _show(self, rows: list[dict]) -> None:
        table = self.query_one(DataTable)
        for r in rows:
            best = r.get("best_speedups") or []
            top = f"{best[0]['op']} {best[0]['speedup']:.2f}×" if best and isinstance(best[0], dict) else _cell(r, "best_speedup")
            passing = (f"{r['kernels_passing']}/{r['kernels_total']}" if r.get("kernels_total") is not None
                       else _cell(r, "kernels_passing", "passing"))
            table.add_row(_cell(r, "when", "start_time"), _cell(r, "model"), _cell(r, "level"), _cell(r, "backend"),
                          passing, top, _cell(r, "e2e_token_match"), _cell(r, "e2e_speedup"), _cell(r, "run_id"))
        self._show_note(f"past runs · {self.model or 'all models'} · {len(rows)} shown"
                        if rows else "no past runs recorded yet")

    def action_close(self) -> None:
        self.dismiss(None)
