"""Live machine metrics: per GPU utilisation, memory, temperature, power and SM clock as
sparklines; CPU and RAM below. Fed `MetricsSnapshot`s by a sampling worker (never samples on the
UI thread). Without an NVIDIA GPU it says so and shows CPU/RAM only."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Sparkline, Static

from fastkernels.gpu.metrics import MetricsSnapshot

HISTORY = 60  # samples kept per series: 30 s at the 500 ms sampling period


class Metric(Vertical):
    """A label with the latest value and a sparkline of the recent ones."""

    def __init__(self, title: str, **kw) -> None:
        super().__init__(**kw)
        self.metric_title = title
        self.values: deque[float] = deque(maxlen=HISTORY)

    def compose(self) -> ComposeResult:
        yield Static(self.metric_title, classes="metric-label")
        yield Sparkline([], classes="metric-spark")

    def push(self, value: float, text: str) -> None:
        self.values.append(value)
        self.query_one(Static).update(f"{self.metric_title} {text}")
        self.query_one(Sparkline).data = list(self.values)


class GpuPanel(VerticalScroll):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._gpu_count: int | None = None

    def compose(self) -> ComposeResult:
        yield Static("sampling…", id="gpu-note")
        yield Vertical(id="gpu-list")
        yield Static("host", classes="gpu-title")
        yield Metric("CPU", id="host-cpu")
        yield Metric("RAM", id="host-ram")

    def update_snapshot(self, snap: MetricsSnapshot) -> None:
        if not self.is_mounted:
            return
        note = self.query_one("#gpu-note", Static)
        if self._gpu_count != len(snap.gpus):
            self._gpu_count = len(snap.gpus)
            box = self.query_one("#gpu-list", Vertical)
            box.remove_children()
            for g in snap.gpus:
                box.mount(Static(f"GPU{g.index} {g.name}", classes="gpu-title"))
                for key, title in (("util", "util"), ("mem", "mem"), ("temp", "temp"), ("power", "power"), ("clock", "SM clock")):
                    box.mount(Metric(title, id=f"gpu{g.index}-{key}"))
        if snap.gpus:
            note.update(f"{len(snap.gpus)} NVIDIA GPU{'s' if len(snap.gpus) > 1 else ''}")
            note.display = False
            for g in snap.gpus:
                self.call_after_refresh(self._push_gpu, g)
        else:
            note.update(snap.gpu_note or "no NVIDIA GPU")
            note.display = True
        h = snap.host
        self.query_one("#host-cpu", Metric).push(h.cpu_pct, f"{h.cpu_pct:.0f}% of {h.cpu_count} cores")
        self.query_one("#host-ram", Metric).push(h.ram_pct, f"{h.ram_used_mb / 1024:.1f}/{h.ram_total_mb / 1024:.1f} GiB")

    def _push_gpu(self, g) -> None:
        def m(key):
            return self.query_one(f"#gpu{g.index}-{key}", Metric)

        try:
            m("util").push(g.util_pct, f"{g.util_pct:.0f}%")
            m("mem").push(g.mem_pct, f"{g.mem_used_mb / 1024:.1f}/{g.mem_total_mb / 1024:.0f} GiB")
            if g.temp_c is not None:
                m("temp").push(g.temp_c, f"{g.temp_c:.0f} °C")
            if g.power_w is not None:
                limit = f"/{g.power_limit_w:.0f}" if g.power_limit_w else ""
                m("power").push(g.power_w, f"{g.power_w:.0f}{limit} W")
            if g.sm_clock_mhz is not None:
                m("clock").push(g.sm_clock_mhz, f"{g.sm_clock_mhz:.0f} MHz")
        except Exception as exc:  # widgets not mounted yet on the very first sample
            if type(exc).__name__ != "NoMatches":
                raise
